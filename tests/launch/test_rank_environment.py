import pytest

from launch.config import ConfigError
from launch.launchers.external import external_rank_environment
from launch.launchers.torchrun import torchrun_arguments
from llm.config import TrainConfig
from llm.devices import cpu_threads_per_rank, rank_environment


def test_torchrun_variables_are_left_alone():
    assert external_rank_environment({"RANK": "3", "WORLD_SIZE": "8"}) == {}


def test_srun_task_variables_become_torch_ranks():
    env = external_rank_environment({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"})
    assert env == {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1"}


def test_a_bare_process_is_a_single_rank_that_binds_its_own_port_on_loopback():
    env = external_rank_environment({})
    assert env == {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}


def test_cpu_ranks_use_deepspeeds_cpu_accelerator_and_split_the_cores_between_them():
    assert cpu_threads_per_rank(2, cpus=16) == 8
    assert cpu_threads_per_rank(3, cpus=16) == 5
    assert cpu_threads_per_rank(4, cpus=2) == 1
    env = rank_environment(2, base={})
    assert env["DS_ACCELERATOR"] == "cpu"
    assert env["OMP_NUM_THREADS"] == str(cpu_threads_per_rank(2))


def test_one_node_runs_torchrun_standalone_with_its_own_rendezvous_port():
    args = torchrun_arguments(TrainConfig(nproc=2), "runs/x", {})
    assert args == ["--standalone", "--nproc_per_node", "2"]


def test_several_nodes_meet_in_a_c10d_rendezvous_on_the_first_nodes_address():
    args = torchrun_arguments(
        TrainConfig(nodes=2, nproc=4), "s3://b/run", {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400", "NODE_RANK": "1"}
    )
    option = dict(zip(args[::2], args[1::2]))
    assert "--standalone" not in args
    assert option["--nnodes"] == "2" and option["--nproc_per_node"] == "4" and option["--node_rank"] == "1"
    assert option["--rdzv_backend"] == "c10d" and option["--rdzv_endpoint"] == "127.0.0.1:29400"
    assert option["--local_addr"] == "127.0.0.1"
    # every node derives the same rendezvous id from the run
    same = torchrun_arguments(
        TrainConfig(nodes=2, nproc=4), "s3://b/run", {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400"}
    )
    assert dict(zip(same[::2], same[1::2]))["--rdzv_id"] == option["--rdzv_id"]


def test_several_nodes_without_a_rendezvous_address_is_a_one_line_error():
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT"):
        torchrun_arguments(TrainConfig(nodes=2), "runs/x", {})
