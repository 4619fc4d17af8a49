"""Pure metric functions and meters (PSNR/SSIM, Y-PSNR/SSIM, Frechet distance, VOI/ARAND); the drivers that load
releases and loop over data are in ``vistok.evaluation``."""
