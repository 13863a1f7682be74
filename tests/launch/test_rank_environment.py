from launch.local import external_rank_environment, rank_environment, torchrun_command


def test_torchrun_variables_are_left_alone():
    assert external_rank_environment({"RANK": "3", "WORLD_SIZE": "8"}) == {}


def test_srun_task_variables_become_torch_ranks():
    env = external_rank_environment({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"})
    assert env == {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1"}


def test_a_bare_process_is_a_single_rank_on_loopback():
    env = external_rank_environment({})
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "1" and env["MASTER_ADDR"] == "127.0.0.1"
    assert 0 < int(env["MASTER_PORT"]) < 65536


def test_cpu_ranks_use_deepspeeds_cpu_accelerator_and_split_threads():
    env = rank_environment(2, base={})
    assert env["DS_ACCELERATOR"] == "cpu"
    assert int(env["OMP_NUM_THREADS"]) >= 1


def test_torchrun_command_runs_the_worker_module_with_its_own_rendezvous_port():
    cmd = torchrun_command("/tmp/job.json", 2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2"
    assert "--standalone" in cmd and "--master_port" not in cmd
    assert cmd[-3:] == ["-m", "llm.worker", "/tmp/job.json"]
