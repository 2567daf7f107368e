"""Which network interface a multi-node process group talks over.

Without GLOO_SOCKET_IFNAME, gloo binds to the address this host's name resolves to and
advertises it to the other ranks. Where the name resolves to a loopback address (Debian's
`127.0.1.1 <hostname>` line, containers or pods that share one hostname mapped to 127.0.0.1),
the ranks of another node then connect to their own loopback ("Connection refused,
remote=[127.0.0.1]"). This module names the interface that routes to the main address instead,
before the process group starts, unless the user named one. Linux only (the interface address
comes from an ioctl); elsewhere nothing is chosen.
"""

import fcntl
import ipaddress
import logging
import os
import socket
import struct

from lightdist.errors import ConfigError

log = logging.getLogger(__name__)

IFNAME_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
_SIOCGIFADDR = 0x8915  # Linux: an interface's (primary) IPv4 address
# Where the default route goes, asked with an address no host has (TEST-NET-2); nothing is sent.
_ANY_REMOTE = "198.51.100.1"


def _resolve(host: str, family: int = socket.AF_UNSPEC) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return [info[4][0] for info in infos]


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address.split("%")[0]).is_loopback


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def hostname_is_loopback(hostname: str | None = None) -> bool:
    """True when gloo's own choice would be loopback: this host's name resolves first to a
    loopback address, or to nothing (gloo then falls back to 127.0.0.1)."""
    addresses = _resolve(hostname or socket.gethostname())
    return not addresses or _is_loopback(addresses[0])


def source_address(remote: str) -> str | None:
    """The local IPv4 address the kernel sends from to reach `remote` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((remote, 9))
        except OSError:  # no route
            return None
        return probe.getsockname()[0]


def interface_addresses() -> dict[str, str]:
    """Each network interface's IPv4 address, by name (interfaces without one are left out)."""
    addresses = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue
            addresses[name] = socket.inet_ntoa(reply[20:24])  # ifreq: 16-byte name, then sockaddr_in
    return addresses


def route_interface(main_address: str) -> tuple[str, str] | None:
    """(interface, why) for the interface that reaches `main_address`, or None.

    The main node's own name may resolve to loopback on the main node itself: its traffic then
    leaves through the default route's interface, or the only non-loopback one.
    """
    interfaces = interface_addresses()
    by_address = {address: name for name, address in interfaces.items()}
    target = next(iter(_resolve(main_address, socket.AF_INET)), None)
    if target is not None and not _is_loopback(target):
        source = source_address(target)
        if source in by_address:
            where = main_address if target == main_address else f"{main_address} ({target})"
            return by_address[source], f"it routes to {where}"
    source = source_address(_ANY_REMOTE)
    if source in by_address and not _is_loopback(source):
        return by_address[source], "it holds the default route"
    others = [name for name, address in interfaces.items() if not _is_loopback(address)]
    if len(others) == 1:
        return others[0], "it is the only interface besides loopback"
    return None


def _check_names(value: str) -> None:
    known = [name for _, name in socket.if_nameindex()]
    unknown = [name for name in value.split(",") if name not in known]
    if unknown:
        raise ConfigError(f"distributed.socket_ifname={value}: {socket.gethostname()} has no network interface "
                          f"{', '.join(unknown)}",
                          hint=f"name one of {', '.join(known)}, or leave it null to choose the one that routes "
                               "to the main node")


def pin_socket_interface(main_address: str, num_nodes: int, configured: str | None = None) -> str | None:
    """Set GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME before the process group starts; returns the
    interface set, or None when nothing was set.

    `configured` (distributed.socket_ifname) is set as it is. Otherwise only what matters is
    chosen: a job over several nodes, variables the user left unset, a host whose name resolves to
    loopback, and a main address that is not loopback (a loopback one: every rank is on this host).
    """
    if configured:
        _check_names(configured)
        for name in IFNAME_VARIABLES:
            os.environ[name] = configured
        return configured
    unset = [name for name in IFNAME_VARIABLES if not os.environ.get(name)]
    if num_nodes <= 1 or not unset or not hostname_is_loopback():
        return None
    if main_address == "localhost" or (_is_ip(main_address) and _is_loopback(main_address)):
        return None  # every rank is on this host (a name that resolves to loopback is only so here)
    choice = route_interface(main_address)
    if choice is None:
        log.warning("%s resolves to a loopback address and no network interface could be chosen for the "
                    "process group: set distributed.socket_ifname if the nodes cannot connect",
                    socket.gethostname())
        return None
    interface, why = choice
    for name in unset:
        os.environ[name] = interface
    log.info("%s=%s: %s resolves to a loopback address, and %s", "/".join(unset), interface,
             socket.gethostname(), why)
    return interface
