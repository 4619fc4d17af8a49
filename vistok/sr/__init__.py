"""Super-resolution models (CATANet, the window-attention baseline), usable as a cascade stage after generation."""
