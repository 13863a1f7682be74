"""Which addresses a node of a multi-node job uses, whatever its hostname resolves to."""

import pytest

from launch.config import ConfigError
from launch.launchers.torchrun import torchrun_arguments
from llm.config import TrainConfig
from llm.devices import gloo_interface_environment


def options(args):
    return dict(zip(args[::2], args[1::2]))


def test_gloo_binds_the_interface_that_holds_the_nodes_address():
    assert gloo_interface_environment("127.0.0.1", {}) == {"GLOO_SOCKET_IFNAME": "lo"}


def test_an_interface_the_user_chose_for_gloo_wins():
    assert gloo_interface_environment("127.0.0.1", {"GLOO_SOCKET_IFNAME": "ib0"}) == {}


def test_an_address_no_interface_holds_leaves_gloo_alone():
    assert gloo_interface_environment("198.51.100.7", {}) == {}


def test_the_first_node_hosts_the_rendezvous_when_master_addr_is_its_own_address():
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400", "NODE_RANK": "0"}
    assert options(torchrun_arguments(TrainConfig(nodes=2), "s3://b/run", env))["--rdzv_conf"] == "is_host=1"


def test_other_nodes_leave_hosting_the_rendezvous_to_torchs_own_guess():
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400", "NODE_RANK": "1"}
    assert "--rdzv_conf" not in torchrun_arguments(TrainConfig(nodes=2), "s3://b/run", env)


def test_a_master_addr_that_does_not_resolve_is_a_one_line_error():
    env = {"MASTER_ADDR": "no-such-node.invalid", "MASTER_PORT": "29400"}
    with pytest.raises(ConfigError, match="MASTER_ADDR='no-such-node.invalid' cannot be reached from this node"):
        torchrun_arguments(TrainConfig(nodes=2), "s3://b/run", env)
