"""
Cyclone DDS configuration: loopback-only unless the user names a network interface.

Left alone, Cyclone picks a real interface and multicasts discovery onto the LAN; a standalone
demo or test must stay on this machine, so the default config binds ``lo`` with unicast
discovery to 127.0.0.1 (participant indices let up to ``MAX_PARTICIPANTS`` processes find each
other). A user's own ``CYCLONEDDS_URI`` is respected: Cyclone reads it when no config is given.
The config must be in place before the first DomainParticipant of a domain exists, so
``open_participant`` creates the ``Domain`` with the XML first.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Mapping
from xml.sax.saxutils import quoteattr

from cyclonedds.core import DDSException
from cyclonedds.domain import Domain, DomainParticipant

LOOPBACK = "lo"
MAX_PARTICIPANTS = 30
MAX_ROS_DOMAIN_ID = 232  # the largest id rmw allows on Linux (port arithmetic)


@dataclass(frozen=True)
class DdsConfig:
    """Where a participant goes: the domain id and the XML (None: Cyclone's own lookup)."""

    domain_id: int
    xml: str | None
    description: str


def domain_id_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """``ROS_DOMAIN_ID`` as ROS reads it (unset or empty: 0); ValueError if out of range."""
    text = environ.get("ROS_DOMAIN_ID", "").strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) > MAX_ROS_DOMAIN_ID:
        raise ValueError(f"ROS_DOMAIN_ID must be an integer in 0..{MAX_ROS_DOMAIN_ID}, "
                         f"got {text!r}")
    return int(text)


def build_config_xml(interface: str | None = None, trace_file: str | None = None) -> str:
    """
    Build the ``<CycloneDDS>`` XML: loopback-only by default, else bound to ``interface``.

    On a named interface Cyclone's defaults apply (multicast discovery where the interface
    supports it), so ROS 2 nodes on other machines are found as usual. ``trace_file`` turns on
    Cyclone's config trace (it logs the interfaces it selected), for diagnosis and tests.
    """
    if interface is None or interface == LOOPBACK:
        general = (f'<Interfaces><NetworkInterface name="{LOOPBACK}" multicast="false"/>'
                   "</Interfaces><AllowMulticast>false</AllowMulticast>")
        discovery = ("<Discovery><ParticipantIndex>auto</ParticipantIndex>"
                     f"<MaxAutoParticipantIndex>{MAX_PARTICIPANTS}</MaxAutoParticipantIndex>"
                     '<Peers><Peer Address="127.0.0.1"/></Peers></Discovery>')
    else:
        general = f"<Interfaces><NetworkInterface name={quoteattr(interface)}/></Interfaces>"
        discovery = ""
    tracing = ""
    if trace_file:
        tracing = (f"<Tracing><Verbosity>config</Verbosity>"
                   f"<OutputFile>{_xml_text(trace_file)}</OutputFile></Tracing>")
    return (f'<CycloneDDS><Domain Id="any"><General>{general}</General>{discovery}{tracing}'
            "</Domain></CycloneDDS>")


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def resolve_config(interface: str | None = None, environ: Mapping[str, str] = os.environ,
                   trace_file: str | None = None) -> DdsConfig:
    """Pick the config: an explicit ``interface`` wins, then ``CYCLONEDDS_URI``, then loopback."""
    domain_id = domain_id_from_env(environ)
    if interface is None and environ.get("CYCLONEDDS_URI"):
        return DdsConfig(domain_id, None, "CYCLONEDDS_URI from the environment")
    if interface is not None and interface != LOOPBACK:
        names = [name for _, name in socket.if_nameindex()]
        if interface not in names:
            raise ValueError(f"no network interface {interface!r} here (there are: "
                             f"{', '.join(names)})")
    where = f"interface {interface}" if interface else "loopback only"
    return DdsConfig(domain_id, build_config_xml(interface, trace_file), where)


_domains: dict[int, Domain] = {}


def open_participant(config: DdsConfig) -> DomainParticipant:
    """
    Create the domain with our XML (once per process and id), then a participant in it.

    Cyclone refuses to create a domain twice, and a domain keeps its first configuration, so
    the Domain objects live in a module registry for the life of the process.
    """
    try:
        if config.xml is not None and config.domain_id not in _domains:
            _domains[config.domain_id] = Domain(config.domain_id, config.xml)
        return DomainParticipant(config.domain_id)
    except DDSException as err:  # a bad CYCLONEDDS_URI, an interface that is down, ...
        raise RuntimeError(f"Cyclone DDS cannot start ({config.description}): {err}") from None
