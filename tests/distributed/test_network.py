"""The network interface of a multi-node process group (lightdist.distributed.network).

The choice is unit-tested with name resolution and routing replaced; then, where this machine
allows it (root, `ip netns`), for real: two network namespaces joined by a veth pair stand for
two nodes whose shared hostname resolves to 127.0.0.1, as nodes with Debian's 127.0.1.1 line or
a shared hostname do. Without a chosen interface gloo advertises 127.0.0.1 and the second node
cannot connect; with it both form the group.
"""

import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

from lightdist.distributed import network
from lightdist.errors import ConfigError

IFNAMES = network.IFNAME_VARIABLES
# Two nodes' interfaces: the cluster network (eth1) is not the default route (eth0).
INTERFACES = {"lo": "127.0.0.1", "eth0": "192.168.1.5", "eth1": "10.1.0.7"}
ROUTES = {"10.1.0.1": "10.1.0.7", "10.1.0.7": "10.1.0.7", network._ANY_REMOTE: "192.168.1.5"}


@pytest.fixture
def host(monkeypatch):
    """A host named node1 with INTERFACES and ROUTES; `names` is what names resolve to."""
    names = {"node1": ["127.0.1.1"], "node0": ["10.1.0.1"], "localhost": ["127.0.0.1"]}

    def getaddrinfo(name, port, family=0, type=0, *args):
        if name not in names and not network._is_ip(name):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, type, 6, "", (a, 0)) for a in names.get(name, [name])]

    monkeypatch.setattr(socket, "gethostname", lambda: "node1")
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "if_nameindex", lambda: list(enumerate(INTERFACES, 1)))
    monkeypatch.setattr(network, "interface_addresses", lambda: dict(INTERFACES))
    monkeypatch.setattr(network, "source_address", ROUTES.get)
    for name in IFNAMES:  # set first, so that what the code under test sets is undone afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return names


def chosen() -> list[str | None]:
    return [os.environ.get(name) for name in IFNAMES]


def test_loopback_hostname_takes_the_interface_that_routes_to_the_main_node(host, caplog):
    caplog.set_level("INFO", logger=network.__name__)
    assert network.pin_socket_interface("node0", num_nodes=2) == "eth1"
    assert chosen() == ["eth1", "eth1"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "eth1" in lines[0] and "node1" in lines[0] and "node0" in lines[0]


def test_the_main_node_itself_takes_the_default_route(host):
    host["node1"] = ["127.0.1.1"]  # MASTER_ADDR=node1 on node1: its own name is loopback here only
    assert network.pin_socket_interface("node1", num_nodes=2) == "eth0"


def test_without_a_default_route_the_only_other_interface(host, monkeypatch):
    monkeypatch.setattr(network, "interface_addresses", lambda: {"lo": "127.0.0.1", "ib0": "10.2.0.3"})
    monkeypatch.setattr(network, "source_address", lambda remote: None)
    assert network.pin_socket_interface("node1", num_nodes=2) == "ib0"


def test_an_unresolvable_hostname_counts_as_loopback(host, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "nameless")  # gloo falls back to 127.0.0.1
    assert network.pin_socket_interface("node0", num_nodes=2) == "eth1"


@pytest.mark.parametrize("case", ["one node", "resolvable hostname", "user's variable", "loopback main address"])
def test_nothing_is_chosen_where_it_does_not_matter(host, monkeypatch, case):
    main, nodes = "node0", 2
    if case == "one node":
        nodes = 1
    elif case == "resolvable hostname":
        host["node1"] = ["10.1.0.7"]
    elif case == "user's variable":
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth0")
        monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth0")
    else:  # every rank on this machine: loopback is right
        main = "127.0.0.1"
    before = chosen()
    assert network.pin_socket_interface(main, num_nodes=nodes) is None
    assert chosen() == before


def test_a_variable_the_user_set_is_kept(host, monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth0")
    network.pin_socket_interface("node0", num_nodes=2)
    assert chosen() == ["eth0", "eth1"]


def test_the_configured_interface_wins(host, monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth1")
    assert network.pin_socket_interface("127.0.0.1", num_nodes=1, configured="eth0") == "eth0"
    assert chosen() == ["eth0", "eth0"]


def test_an_unknown_configured_interface_names_the_known_ones(host):
    with pytest.raises(ConfigError) as info:
        network.pin_socket_interface("node0", num_nodes=2, configured="eth0,eth9")
    assert "eth9" in str(info.value) and "eth1" in str(info.value)
    assert chosen() == [None, None]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="interface addresses come from a Linux ioctl")
def test_this_machine_loopback_interface_and_route():
    addresses = network.interface_addresses()
    loopback = [name for name, address in addresses.items() if address == "127.0.0.1"]
    assert loopback, addresses
    assert network.source_address("127.0.0.1") == "127.0.0.1"


# -- for real: two network namespaces ------------------------------------------------------------------

PAIR = """
import datetime, os, sys
import torch, torch.distributed as dist
if sys.argv[1] == "choose":
    from lightdist.distributed.network import pin_socket_interface
    pin_socket_interface(os.environ["MASTER_ADDR"], num_nodes=2)
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=2))
total = torch.tensor([rank + 1.0], dtype=torch.float64)
dist.all_reduce(total)
print("SUM", total.item(), os.environ.get("GLOO_SOCKET_IFNAME"), flush=True)
dist.destroy_process_group()
"""


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


@pytest.fixture
def two_nodes():
    """Two network namespaces joined by a veth pair (10.214.x.1 and .2): (namespace, address) each."""
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("unshare")):
        pytest.skip("needs root, ip and unshare for network namespaces")
    tag = uuid.uuid4().hex[:6]
    subnet = f"10.214.{int(tag[:2], 16)}"
    nodes = [(f"ldt{tag}{i}", f"{subnet}.{i}", f"ldt{tag}v{i}") for i in (1, 2)]
    try:
        steps = [("netns", "add", ns) for ns, _, _ in nodes]
        steps.append(("link", "add", nodes[0][2], "type", "veth", "peer", "name", nodes[1][2]))
        for ns, address, dev in nodes:
            steps += [("link", "set", dev, "netns", ns), ("-n", ns, "addr", "add", f"{address}/24", "dev", dev),
                      ("-n", ns, "link", "set", "lo", "up"), ("-n", ns, "link", "set", dev, "up")]
        for step in steps:
            result = _ip(*step)
            if result.returncode != 0:
                pytest.skip(f"cannot stage network namespaces here: ip {' '.join(step)}: {result.stderr.strip()}")
        yield [(ns, address) for ns, address, _ in nodes]
    finally:
        for ns, _, _ in nodes:
            _ip("netns", "del", ns)


def _start_pair(namespaces, mode: str, port: int, script: str) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if k not in IFNAMES}
    procs = []
    for rank, (ns, _) in enumerate(namespaces):
        # Each node's hostname is `localhost`: it resolves to 127.0.0.1 wherever it is looked up.
        command = ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c",
                   'hostname localhost && exec "$0" "$@"', sys.executable, "-c", script, mode]
        procs.append(subprocess.Popen(command, env={**env, "MASTER_ADDR": namespaces[0][1], "MASTER_PORT": str(port),
                                                    "RANK": str(rank)},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def test_two_nodes_with_a_loopback_hostname_form_a_gloo_group(two_nodes):
    # Both pairs at once: without a chosen interface (the failure this fixes), and with it.
    pairs = {mode: _start_pair(two_nodes, mode, port, PAIR) for mode, port in (("plain", 29641), ("choose", 29642))}
    out = {mode: [p.communicate(timeout=120)[0] for p in procs] for mode, procs in pairs.items()}
    codes = {mode: [p.returncode for p in procs] for mode, procs in pairs.items()}
    assert codes["choose"] == [0, 0], out["choose"]
    sums = [line.split() for text in out["choose"] for line in text.splitlines() if line.startswith("SUM")]
    assert [s[1] for s in sums] == ["3.0", "3.0"]
    assert [s[2] for s in sums] == [f"{two_nodes[0][0][:-1]}v1", f"{two_nodes[1][0][:-1]}v2"]  # each node's veth
    # The staging reproduces the failure: gloo advertised loopback, so the pair could not connect.
    assert codes["plain"] != [0, 0], out["plain"]
    assert "127.0.0.1" in "".join(out["plain"])
