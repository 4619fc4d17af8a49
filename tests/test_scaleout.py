"""configs/accelerate/: every file parses with accelerate's own config loader; the DDP file's Accelerator
and the FSDP file's plugin build on CPU (the plugin wraps vistok's transformer Block); DeepSpeed (an
optional extra) is validated by parsing."""
import os

import pytest
from accelerate import Accelerator, DistributedDataParallelKwargs, FullyShardedDataParallelPlugin
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType

from tests.conftest import ROOT
from vistok.generators.ar import ARGenerator

ACC = os.path.join(ROOT, "configs", "accelerate")


def load(name):
    return ClusterConfig.from_yaml_file(os.path.join(ACC, name))


@pytest.mark.parametrize("name, kind", [("ddp_multinode.yaml", DistributedType.MULTI_GPU),
                                        ("fsdp.yaml", DistributedType.FSDP),
                                        ("deepspeed_zero2.yaml", DistributedType.DEEPSPEED)])
def test_accelerate_files_parse(name, kind):
    cfg = load(name)
    assert cfg.distributed_type == kind and cfg.mixed_precision == "bf16"
    assert cfg.num_processes % cfg.num_machines == 0


def test_ddp_file_builds_an_accelerator_on_cpu():
    cfg = load("ddp_multinode.yaml")
    assert cfg.num_machines == 2 and cfg.rdzv_backend == "static" and cfg.main_process_port
    acc = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    assert acc.device.type == "cpu"


def test_fsdp_plugin_from_the_file_wraps_vistok_blocks():
    f = load("fsdp.yaml").fsdp_config
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=f["fsdp_version"], sharding_strategy=f["fsdp_sharding_strategy"],
        auto_wrap_policy=f["fsdp_auto_wrap_policy"].lower(),
        transformer_cls_names_to_wrap=[f["fsdp_transformer_layer_cls_to_wrap"]],
        backward_prefetch=f["fsdp_backward_prefetch"], state_dict_type=f["fsdp_state_dict_type"],
        use_orig_params=f["fsdp_use_orig_params"],
        sync_module_states=False, cpu_ram_efficient_loading=False)  # both need a GPU to place weights; not the point here
    model = ARGenerator(vocab_size=16, token_shape=[2, 2], num_classes=2, dim=16, depth=2, heads=2)
    plugin.set_auto_wrap_policy(model)  # resolves "Block" in the model, or raises
    assert plugin.auto_wrap_policy is not None
    Accelerator(cpu=True, fsdp_plugin=plugin)  # builds; on CPU accelerate runs it without sharding
    typo = FullyShardedDataParallelPlugin(fsdp_version=1, auto_wrap_policy="transformer_based_wrap",
                                          transformer_cls_names_to_wrap=["Blok"], sync_module_states=False,
                                          cpu_ram_efficient_loading=False)
    with pytest.raises(ValueError, match="Blok"):
        typo.set_auto_wrap_policy(model)


def test_deepspeed_file_matches_the_trainer_defaults():
    ds = load("deepspeed_zero2.yaml").deepspeed_config
    assert ds["zero_stage"] == 2 and ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 1.0
