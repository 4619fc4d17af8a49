"""configs/accelerate/: every file parses with accelerate's own config loader; what `accelerate launch` makes
of the DDP and DeepSpeed files (torchrun's arguments, the environment handed to the processes) is what they
promise, and that environment builds an Accelerator on CPU; the FSDP file's plugin builds on CPU (it wraps
vistok's transformer Block). DeepSpeed (an optional extra) is not needed for any of this."""
import os

import pytest
import torch.distributed.run as torchrun
from accelerate import Accelerator, DistributedDataParallelKwargs, FullyShardedDataParallelPlugin
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import _filter_args, _validate_launch_command, launch_command_parser
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from tests.conftest import ROOT
from vistok.config import load_config
from vistok.generators.ar import ARGenerator

ACC = os.path.join(ROOT, "configs", "accelerate")
AR = "configs/ar/imagenet256.yaml"  # the training the files' launch lines run


def load(name):
    return ClusterConfig.from_yaml_file(os.path.join(ACC, name))


def launch(name, *flags):
    """``accelerate launch --config_file configs/accelerate/NAME FLAGS train.py --config AR`` up to the point
    where it starts processes: the resolved arguments, and the file's settings as accelerate reads them.
    (accelerate's own launcher steps; constraints.txt pins the accelerate they were written against.)"""
    args = launch_command_parser().parse_args(["--config_file", os.path.join(ACC, name), *flags, "train.py", "--config", AR])
    args, file_settings, _ = _validate_launch_command(args)
    return args, file_settings


@pytest.mark.parametrize("name, kind", [("ddp_multinode.yaml", DistributedType.MULTI_GPU),
                                        ("fsdp.yaml", DistributedType.FSDP),
                                        ("deepspeed_zero2.yaml", DistributedType.DEEPSPEED)])
def test_accelerate_files_parse(name, kind):
    cfg = load(name)
    assert cfg.distributed_type == kind and cfg.mixed_precision == "bf16"
    assert cfg.num_processes % cfg.num_machines == 0


def test_ddp_file_launches_two_nodes_of_eight_and_its_environment_builds_an_accelerator_on_cpu(monkeypatch):
    args, _ = launch("ddp_multinode.yaml", "--machine_rank", "1")  # the second node (rank 0 would probe its port)
    env = prepare_multi_gpu_env(args)
    run = _filter_args(args, torchrun.get_args_parser(),  # the arguments torchrun receives on that node
                       ["--training_script", args.training_script, "--training_script_args", args.training_script_args])
    assert (run.nnodes, run.nproc_per_node, run.node_rank) == ("2", "8", 1)  # the file's header: 2 nodes x 8 GPUs
    assert (run.rdzv_backend, run.rdzv_endpoint) == ("static", "10.0.0.1:29500")
    assert [run.training_script, *run.training_script_args] == ["train.py", "--config", AR]
    assert env["ACCELERATE_MIXED_PRECISION"] == load_config(AR).train.mixed_precision == "bf16"
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    AcceleratorState._reset_state(True)  # a state built earlier in this process would be reused silently
    try:
        acc = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
        assert acc.device.type == "cpu" and acc.mixed_precision == "bf16" and acc.num_processes == 1
    finally:
        AcceleratorState._reset_state(True)


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


def test_deepspeed_file_matches_the_training_it_launches():
    args, file_settings = launch("deepspeed_zero2.yaml")
    args.deepspeed_fields_from_accelerate_config = ",".join(file_settings.deepspeed_config)  # as launch_command does
    _, env = prepare_deepspeed_cmd_env(args)  # what the processes read: a misspelt key in the file never gets here
    train = load_config(AR).train  # the file's comment: keep these equal to train.grad_accum_steps / train.grad_clip
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2" and env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert int(env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"]) == train.grad_accum_steps
    assert float(env["ACCELERATE_GRADIENT_CLIPPING"]) == train.grad_clip
    assert env["ACCELERATE_MIXED_PRECISION"] == train.mixed_precision
