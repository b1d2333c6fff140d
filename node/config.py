"""The node's config file (TOML) as frozen, validated sections, with errors that name the field.

Operators edit this file by hand, so every mistake comes back as one line naming the file, the
exact field and what was wrong (`node.toml: network.listen[1]: '/ip4/1.2.3' is not a valid
multiaddr`), and a mistyped key is refused with the nearest known one rather than silently
left at its default. `load_config` and `default_config` share one parser, so a config built in
code obeys exactly the rules of one read from disk, and `render_config` writes what it reads.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import multiaddr
import tomli_w

from node.capacity import DETECT_MODES, GPU_COUNT_MAX, GPU_MEMORY_MIB_MAX, MODEL_BYTES_MAX
from p2p.announcements import ADDRS_MAX, GPU_MODELS_MAX, BookConfig, GpuSpec
from p2p.identity import public_key_from_peer_id
from p2p.transport import TransportConfig

CONFIG_FILE = "node.toml"
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
CHAIN_ID_BYTES_MAX = 64
REGION_BYTES_MAX = 32
ADDR_BYTES_MAX = 256
"""What an announcement carries per address (p2p.announcements)."""
BOOTSTRAP_MAX = 64
PRICE_MAX = 2**64 - 1
TTL_MAX_MS = BookConfig().ttl_max_ms
"""Peers drop announcements that live longer than this, so we never ask for more."""
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")
HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")
_TRANSPORT = TransportConfig()

_T = TypeVar("_T")
Parser = Callable[[object, str], _T]


class ConfigError(Exception):
    """A config the node cannot run with; `field` is the dotted TOML path (None for problems
    with the file as a whole: missing, unreadable, not TOML)."""

    def __init__(self, file: Path | str, field: str | None, problem: str) -> None:
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")
        self.file, self.field, self.problem = str(file), field, problem


# ---------------------------------------------------------------------------------------------
# the sections


@dataclass(frozen=True)
class NodeSection:
    name: str
    """A label for tables and logs; not an identity (the key is)."""
    key_file: Path
    data_dir: Path
    chain_id: str = "gpumesh-local"
    """Scopes every signature, so a message from another network never verifies here."""
    region: str = "eu-west"


@dataclass(frozen=True)
class NetworkSection:
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    """Full multiaddrs ending in /p2p/<peer id>, so the first connection is authenticated."""
    publish_rate_per_s: int = _TRANSPORT.publish_rate_per_s
    inbox_max: int = _TRANSPORT.inbox_max
    request_timeout_ms: int = _TRANSPORT.request_timeout_ms
    ping_interval_ms: int = _TRANSPORT.ping_interval_ms
    ping_timeout_ms: int = _TRANSPORT.ping_timeout_ms
    ping_misses_max: int = _TRANSPORT.ping_misses_max


@dataclass(frozen=True)
class StatusSection:
    """The status/metrics endpoint; loopback only, since it answers without authentication.
    Its /admin routes (fault injection) are off unless a token file is named."""

    host: str = "127.0.0.1"
    port: int = 0
    admin_token_file: Path | None = None
    """A file holding the bearer token /admin requires (mode 0600); None: /admin is off."""

    @property
    def listen(self) -> str:
        """`host:port` as written in the file (IPv6 hosts in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CapacitySection:
    detect: str = "auto"
    price_per_gpu_hour: int = 1_000_000
    """Integer base units of the token per GPU-hour."""
    gpus: tuple[GpuSpec, ...] = ()
    """The declared inventory: used by detect = "declared", and by "auto" when none is found."""


@dataclass(frozen=True)
class GossipSection:
    announce_interval_ms: int = 2_000
    announcement_ttl_ms: int = 30_000


@dataclass(frozen=True)
class LogSection:
    level: str = "info"
    format: str = "json"
    file: Path | None = None
    """None: stderr."""


@dataclass(frozen=True)
class ChainSection:
    """The replicated chain (consensus and ledger). Without a genesis the node runs no chain,
    only capacity gossip."""

    genesis: Path | None = None
    """The genesis TOML every node of the network shares; its chain_id must be node.chain_id."""
    data_dir: Path | None = None
    """Where chain.sqlite lives; None: node.data_dir."""
    empty_block_ms: int = 1_000
    """With nothing to order, a block is still proposed this long after the round began."""
    timeout_propose_ms: int = 3_000
    timeout_vote_ms: int = 1_000
    sync_interval_ms: int = 1_000
    snapshot_every: int = 10
    """Store the whole ledger state with every this-many blocks (restart cost vs disk)."""


@dataclass(frozen=True)
class NodeConfig:
    path: Path
    """The config file; relative paths inside it were resolved against its folder."""
    node: NodeSection
    network: NetworkSection = field(default_factory=NetworkSection)
    status: StatusSection = field(default_factory=StatusSection)
    capacity: CapacitySection = field(default_factory=CapacitySection)
    gossip: GossipSection = field(default_factory=GossipSection)
    log: LogSection = field(default_factory=LogSection)
    chain: ChainSection = field(default_factory=ChainSection)

    @property
    def chain_data_dir(self) -> Path:
        return self.chain.data_dir or self.node.data_dir

    def transport_config(self) -> TransportConfig:
        n = self.network
        return TransportConfig(
            publish_rate_per_s=n.publish_rate_per_s,
            inbox_max=n.inbox_max,
            request_timeout_ms=n.request_timeout_ms,
            ping_interval_ms=n.ping_interval_ms,
            ping_timeout_ms=n.ping_timeout_ms,
            ping_misses_max=n.ping_misses_max,
        )


# ---------------------------------------------------------------------------------------------
# reading


def load_config(path: Path) -> NodeConfig:
    """Read and validate a config file; errors name `path` as the caller gave it."""
    resolved = Path(path).expanduser().resolve()
    try:
        text = resolved.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None
    return parse_config(raw, resolved, shown=path)


def parse_config(raw: dict[str, Any], path: Path, *, shown: Path | str | None = None) -> NodeConfig:
    """Validate parsed TOML as the file at `path` (absolute); errors name `shown` or `path`."""
    try:
        return _parse(raw, path)
    except _Problem as problem:
        raise ConfigError(shown or path, problem.field, problem.problem) from None


class _Problem(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


class _Table:
    """One TOML table being read. Its keys are checked up front, so a typo is reported as a
    typo ("did you mean") rather than as the required field it was meant to be."""

    def __init__(self, raw: object, name: str, keys: Sequence[str]) -> None:
        if not isinstance(raw, dict):
            raise _Problem(name, f"expected a table, got {_got(raw)}")
        self.raw, self.name = raw, name
        for key in raw:
            if key not in keys:
                what = "key" if name else "section"
                raise _Problem(self.field(key), f"unknown {what}{_suggest(key, keys)}")

    def field(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def get(self, key: str, parse: Parser[_T], default: _T) -> _T:
        return parse(self.raw[key], self.field(key)) if key in self.raw else default

    def require(self, key: str, parse: Parser[_T], example: str) -> _T:
        if key not in self.raw:
            raise _Problem(self.field(key), f"required (for example {example})")
        return parse(self.raw[key], self.field(key))


_NETWORK_INTS = {  # key -> (min, max)
    "publish_rate_per_s": (1, 100_000),
    "inbox_max": (1, 1_000_000),
    "request_timeout_ms": (1, 600_000),
    "ping_interval_ms": (1, 600_000),
    "ping_timeout_ms": (1, 600_000),
    "ping_misses_max": (1, 1_000),
}

_CHAIN_INTS = {  # key -> (min, max)
    "empty_block_ms": (1, 600_000),
    "timeout_propose_ms": (1, 600_000),
    "timeout_vote_ms": (1, 600_000),
    "sync_interval_ms": (1, 600_000),
    "snapshot_every": (1, 1_000_000),
}


SECTION_KEYS = {
    "node": ("name", "key_file", "data_dir", "chain_id", "region"),
    "network": ("listen", "bootstrap", *_NETWORK_INTS),
    "status": ("listen", "admin_token_file"),
    "capacity": ("detect", "price_per_gpu_hour", "gpus"),
    "gossip": ("announce_interval_ms", "announcement_ttl_ms"),
    "log": ("level", "format", "file"),
    "chain": ("genesis", "data_dir", *_CHAIN_INTS),
}


def _parse(raw: dict[str, Any], path: Path) -> NodeConfig:
    for key in raw:  # a key above the first [section] header belongs to no section
        homes = [name for name, keys in SECTION_KEYS.items() if key in keys]
        if key not in SECTION_KEYS and homes:
            raise _Problem(
                key, f"a key outside any section; did you mean to put it under [{homes[0]}]?"
            )
    _Table(raw, "", tuple(SECTION_KEYS))
    base = path.parent
    return NodeConfig(
        path=path,
        node=_parse_node(raw.get("node", {}), base),
        network=_parse_network(raw.get("network", {})),
        status=_parse_status(raw.get("status", {}), base),
        capacity=_parse_capacity(raw.get("capacity", {})),
        gossip=_parse_gossip(raw.get("gossip", {})),
        log=_parse_log(raw.get("log", {}), base),
        chain=_parse_chain(raw.get("chain", {}), base),
    )


def _parse_node(raw: object, base: Path) -> NodeSection:
    t = _Table(raw, "node", SECTION_KEYS["node"])
    return NodeSection(
        name=t.require("name", _name, 'name = "node-1"'),
        key_file=t.get("key_file", _path(base), _resolve(base, "node.key")),
        data_dir=t.get("data_dir", _path(base), _resolve(base, "data")),
        chain_id=t.get("chain_id", _chain_id, NodeSection.chain_id),
        region=t.get("region", _text(0, REGION_BYTES_MAX), NodeSection.region),
    )


def _parse_network(raw: object) -> NetworkSection:
    t = _Table(raw, "network", SECTION_KEYS["network"])
    knobs = {
        k: t.get(k, _int(lo, hi), getattr(_TRANSPORT, k)) for k, (lo, hi) in _NETWORK_INTS.items()
    }
    return NetworkSection(
        listen=t.get("listen", _addr_list(1, ADDRS_MAX, with_peer=False), NetworkSection.listen),
        bootstrap=t.get("bootstrap", _addr_list(0, BOOTSTRAP_MAX, with_peer=True), ()),
        **knobs,
    )


def _parse_status(raw: object, base: Path) -> StatusSection:
    t = _Table(raw, "status", SECTION_KEYS["status"])
    host, port = t.get("listen", _loopback_host_port, ("127.0.0.1", 0))
    return StatusSection(host, port, t.get("admin_token_file", _optional_path(base), None))


def _parse_capacity(raw: object) -> CapacitySection:
    t = _Table(raw, "capacity", SECTION_KEYS["capacity"])
    return CapacitySection(
        detect=t.get("detect", _choice(DETECT_MODES), CapacitySection.detect),
        price_per_gpu_hour=t.get(
            "price_per_gpu_hour", _int(0, PRICE_MAX), CapacitySection.price_per_gpu_hour
        ),
        gpus=t.get("gpus", _gpus, ()),
    )


def _parse_gossip(raw: object) -> GossipSection:
    t = _Table(raw, "gossip", SECTION_KEYS["gossip"])
    interval = t.get("announce_interval_ms", _int(1, TTL_MAX_MS), 2_000)
    ttl = t.get("announcement_ttl_ms", _int(1, TTL_MAX_MS), 30_000)
    if ttl <= interval:
        raise _Problem(
            t.field("announcement_ttl_ms"),
            f"must exceed {t.field('announce_interval_ms')} ({interval}), got {ttl}: "
            "an announcement must outlive the gap to the next one",
        )
    return GossipSection(interval, ttl)


def _parse_log(raw: object, base: Path) -> LogSection:
    t = _Table(raw, "log", SECTION_KEYS["log"])
    return LogSection(
        level=t.get("level", _choice(LOG_LEVELS), LogSection.level),
        format=t.get("format", _choice(LOG_FORMATS), LogSection.format),
        file=t.get("file", _optional_path(base), None),
    )


def _parse_chain(raw: object, base: Path) -> ChainSection:
    t = _Table(raw, "chain", SECTION_KEYS["chain"])
    knobs = {
        k: t.get(k, _int(lo, hi), getattr(ChainSection, k)) for k, (lo, hi) in _CHAIN_INTS.items()
    }
    if knobs["empty_block_ms"] >= knobs["timeout_propose_ms"]:
        raise _Problem(
            t.field("empty_block_ms"),
            f"must be below {t.field('timeout_propose_ms')} ({knobs['timeout_propose_ms']}), "
            f"got {knobs['empty_block_ms']}: an idle proposer must propose before the others "
            "give up on it",
        )
    return ChainSection(
        genesis=t.get("genesis", _optional_path(base), None),
        data_dir=t.get("data_dir", _optional_path(base), None),
        **knobs,
    )


def _gpus(value: object, where: str) -> tuple[GpuSpec, ...]:
    gpus = tuple(_gpu(item, f"{where}[{i}]") for i, item in enumerate(_array(value, where)))
    if len(gpus) > GPU_MODELS_MAX:
        raise _Problem(where, f"at most {GPU_MODELS_MAX} models, got {len(gpus)}")
    seen: dict[str, int] = {}
    for i, gpu in enumerate(gpus):
        first = seen.setdefault(gpu.model.lower(), i)
        if first != i:
            raise _Problem(
                f"{where}[{i}].model",
                f"{gpu.model!r} is already declared in {where}[{first}]; raise its count instead",
            )
    return gpus


def _gpu(raw: object, where: str) -> GpuSpec:
    t = _Table(raw, where, ("model", "count", "memory_mib"))
    return GpuSpec(
        model=t.require("model", _text(1, MODEL_BYTES_MAX), 'model = "RTX 4090"'),
        count=t.get("count", _int(1, GPU_COUNT_MAX), 1),
        memory_mib=t.require("memory_mib", _int(1, GPU_MEMORY_MIB_MAX), "memory_mib = 24576"),
    )


# ---------------------------------------------------------------------------------------------
# value parsers: (value, field) -> value, raising _Problem


def _got(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return str(value)
    kinds = {str: "string", float: "float", list: "array", dict: "table"}
    kind = kinds.get(type(value), type(value).__name__)
    shown = "" if isinstance(value, dict) else f" {value!r}"
    return f"{kind}{shown[:80]}"


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _Problem(where, f"expected a string, got {_got(value)}")
    return value


def _int(lo: int, hi: int) -> Parser[int]:
    kind = {0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")

    def parse(value: object, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise _Problem(where, f"expected {kind}, got {_got(value)}")
        if value > hi:
            raise _Problem(where, f"must be at most {hi}, got {value}")
        return value

    return parse


def _choice(options: Sequence[str]) -> Parser[str]:
    def parse(value: object, where: str) -> str:
        if _str(value, where) not in options:
            allowed = ", ".join(repr(o) for o in options)
            raise _Problem(where, f"expected one of {allowed}, got {value!r}")
        return str(value)

    return parse


def _text(min_bytes: int, max_bytes: int) -> Parser[str]:
    def parse(value: object, where: str) -> str:
        text = _str(value, where)
        ascii_ok = all(" " <= ch <= "~" for ch in text)  # what the wire accepts
        if not min_bytes <= len(text) <= max_bytes or not ascii_ok:
            raise _Problem(
                where,
                f"expected {min_bytes}..{max_bytes} bytes of printable ASCII, got {text!r}",
            )
        return text

    return parse


def _name(value: object, where: str) -> str:
    text = _str(value, where)
    if not NAME_RE.fullmatch(text):
        raise _Problem(where, f"{text!r} is not a valid name: use 1..32 of A-Z a-z 0-9 . _ -")
    return text


def _chain_id(value: object, where: str) -> str:
    text = _str(value, where)
    if not 1 <= len(text) <= CHAIN_ID_BYTES_MAX or not all(" " <= c <= "~" for c in text):
        raise _Problem(
            where, f"expected 1..{CHAIN_ID_BYTES_MAX} printable ASCII characters, got {text!r}"
        )
    return text


def _resolve(base: Path, text: str | os.PathLike[str]) -> Path:
    """Relative paths are taken from the config's folder, not the current directory, so a node
    starts the same wherever it is launched from."""
    return (base / Path(text).expanduser()).resolve()


def _path(base: Path) -> Parser[Path]:
    def parse(value: object, where: str) -> Path:
        text = _str(value, where)
        if not text or "\0" in text:
            raise _Problem(where, f"expected a file path, got {text!r}")
        return _resolve(base, text)

    return parse


def _optional_path(base: Path) -> Parser[Path | None]:
    def parse(value: object, where: str) -> Path | None:
        return None if _str(value, where) == "" else _path(base)(value, where)

    return parse


def _array(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise _Problem(where, f"expected an array, got {_got(value)}")
    return value


def _addr_list(lo: int, hi: int, *, with_peer: bool) -> Parser[tuple[str, ...]]:
    def parse(value: object, where: str) -> tuple[str, ...]:
        items = _array(value, where)
        if not lo <= len(items) <= hi:
            raise _Problem(where, f"expected {lo}..{hi} addresses, got {len(items)}")
        addrs = tuple(_multiaddr(v, f"{where}[{i}]", with_peer) for i, v in enumerate(items))
        for i, addr in enumerate(addrs):
            if addrs.index(addr) != i:
                raise _Problem(f"{where}[{i}]", f"duplicate of {where}[{addrs.index(addr)}]")
        return addrs

    return parse


def _multiaddr(value: object, where: str, with_peer: bool) -> str:
    """A TCP multiaddr (/ip4|ip6|dns*/HOST/tcp/PORT), ending /p2p/<peer id> when dialled."""
    text = _str(value, where)
    try:
        parts = [(p.name, v) for p, v in multiaddr.Multiaddr(text).items()]
    except (ValueError, TypeError, multiaddr.exceptions.Error):
        raise _Problem(where, f"{text!r} is not a valid multiaddr") from None
    names = [name for name, _ in parts]
    shape = "/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT" + ("/p2p/PEER_ID" if with_peer else "")
    if with_peer and len(names) == 2 and names[1] == "tcp":
        raise _Problem(where, f"{text!r} must end with /p2p/<peer id> of the bootstrap node")
    expected = ["tcp", "p2p"] if with_peer else ["tcp"]
    if len(names) != 1 + len(expected) or names[0] not in HOST_PROTOCOLS or names[1:] != expected:
        raise _Problem(where, f"{text!r} must have the form {shape}")
    if len(text.encode()) > ADDR_BYTES_MAX:
        raise _Problem(where, f"longer than {ADDR_BYTES_MAX} bytes")
    if with_peer:
        _check_dialable(text, where, port=int(parts[1][1]), peer=parts[2][1])
    return str(multiaddr.Multiaddr(text))


def _check_dialable(text: str, where: str, *, port: int, peer: str) -> None:
    if port == 0:
        raise _Problem(where, f"{text!r} has port 0, which cannot be dialled")
    try:
        public_key_from_peer_id(peer)
    except ValueError:
        raise _Problem(where, f"{peer!r} is not an ed25519 libp2p peer id") from None


def _loopback_host_port(value: object, where: str) -> tuple[str, int]:
    text = _str(value, where)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        sep, port_text = rest[:1], rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isascii() or not port_text.isdigit():
        raise _Problem(where, f"expected HOST:PORT such as '127.0.0.1:9101', got {text!r}")
    if ":" in host and not text.startswith("["):
        raise _Problem(where, f"put IPv6 hosts in brackets, as in '[::1]:9101', got {text!r}")
    port = int(port_text)
    if port > 65535:
        raise _Problem(where, f"port must be 0..65535, got {port}")
    if not _is_loopback(host):
        raise _Problem(
            where,
            f"{host!r} is not a loopback address: the status endpoint must not be reachable "
            "from other machines (use 127.0.0.1, ::1 or localhost)",
        )
    return host, port


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# building and writing


def default_config(
    name: str,
    *,
    listen_port: int = 0,
    status_port: int = 0,
    bootstrap: Sequence[str] = (),
    gpus: Sequence[GpuSpec] = (),
    detect: str | None = None,
    region: str = NodeSection.region,
    price_per_gpu_hour: int = CapacitySection.price_per_gpu_hour,
    chain_id: str = NodeSection.chain_id,
    announce_interval_ms: int = GossipSection.announce_interval_ms,
    announcement_ttl_ms: int = GossipSection.announcement_ttl_ms,
    data_dir: str | os.PathLike[str] = "data",
    key_file: str | os.PathLike[str] = "node.key",
    log_level: str = LogSection.level,
    log_format: str = LogSection.format,
    log_file: str | os.PathLike[str] = "",
    admin_token_file: str | os.PathLike[str] = "",
    genesis: str | os.PathLike[str] = "",
    empty_block_ms: int = ChainSection.empty_block_ms,
    base_dir: Path | None = None,
) -> NodeConfig:
    """A loopback config for `base_dir/node.toml` (base_dir: the current directory), checked
    by the same parser as a file, so bad arguments raise ConfigError naming the TOML field.

    Passing `gpus` means detect = "declared" unless `detect` says otherwise: a test swarm must
    announce the mix it was given, not the real GPUs of the machine it happens to run on.
    """
    base = Path(base_dir if base_dir is not None else Path.cwd()).expanduser().resolve()
    draft = NodeConfig(
        path=base / CONFIG_FILE,
        node=NodeSection(name, Path(key_file), Path(data_dir), chain_id, region),
        network=NetworkSection(
            listen=(f"/ip4/127.0.0.1/tcp/{listen_port}",), bootstrap=tuple(bootstrap)
        ),
        status=StatusSection(
            "127.0.0.1",
            status_port,
            Path(admin_token_file) if os.fspath(admin_token_file) else None,
        ),
        capacity=CapacitySection(
            detect or ("declared" if gpus else "auto"), price_per_gpu_hour, tuple(gpus)
        ),
        gossip=GossipSection(announce_interval_ms, announcement_ttl_ms),
        log=LogSection(log_level, log_format, Path(log_file) if os.fspath(log_file) else None),
        chain=ChainSection(
            Path(genesis) if os.fspath(genesis) else None, empty_block_ms=empty_block_ms
        ),
    )
    raw = _to_tables(draft, base)  # relative paths stay relative, to resolve against base
    return parse_config(raw, base / CONFIG_FILE)


_HEADER = """\
# gpumesh node configuration, read by `gpumesh node run --config <this file>`.
#
# Relative paths are taken from this file's folder, not from where the node is started.
# Unknown keys are errors, so a typo cannot silently leave a setting at its default.
# Values are integers where they count something: prices in the token's base units,
# durations in milliseconds (the unit is in each name).
"""

_NOTES = {
    "node": "Who this node is. The key file is its identity (`gpumesh keys new`); name is\n"
    "only a label. chain_id scopes every signature: nodes on other chains are ignored.",
    "network": "libp2p. listen: TCP multiaddrs to bind (/ip4/0.0.0.0/tcp/4001 accepts other\n"
    "machines). bootstrap: peers to dial at start, each ending in /p2p/<peer id>.",
    "status": "The /status and /metrics endpoint. Loopback only: it has no authentication.\n"
    "admin_token_file: a file (mode 0600) with the bearer token for /admin (fault\n"
    "injection by `gpumesh swarm`); empty turns /admin off.",
    "capacity": "What this node offers. detect: auto (NVML or nvidia-smi, else the declared\n"
    "GPUs), nvidia-smi (must find GPUs) or declared (trust the list below, unverified).\n"
    "gpus: the declared models, each {model, count, memory_mib} (or [[capacity.gpus]] tables).",
    "gossip": f"Capacity announcements: how often, and how long each stays valid\n"
    f"(longer than the interval, at most {TTL_MAX_MS}).",
    "log": "level: debug|info|warning|error; format: json|text; file: empty for stderr.",
    "chain": "The replicated chain. genesis: the network's genesis file (empty: no chain,\n"
    "capacity gossip only). data_dir: where chain.sqlite lives (empty: node.data_dir).\n"
    "empty_block_ms < timeout_propose_ms; durations in milliseconds.",
}


def render_config(cfg: NodeConfig, base_dir: Path) -> str:
    """TOML text that `load_config` reads back to an equal config when saved in `base_dir`.
    Every setting is written, defaults included, so the file documents what the node runs
    with; paths under `base_dir` are written relative, so the folder can be moved whole."""
    base = Path(base_dir).expanduser().resolve()
    parts = [_HEADER]
    for section, table in _to_tables(cfg, base).items():
        note = "".join(f"# {line}\n" for line in _NOTES[section].splitlines())
        parts.append(note + tomli_w.dumps({section: table}))
    return "\n".join(parts)


def write_config(path: Path, cfg: NodeConfig) -> None:
    """Write atomically (a temporary file, then rename), so a crash never leaves half a file."""
    target = Path(path).expanduser().resolve()
    text = render_config(cfg, target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def _to_tables(cfg: NodeConfig, base: Path) -> dict[str, dict[str, Any]]:
    """Sections as TOML tables: one key per dataclass field, except status.listen."""
    tables = {f.name: _table(getattr(cfg, f.name), base) for f in fields(cfg) if f.name != "path"}
    tables["status"] = {
        "listen": cfg.status.listen,
        "admin_token_file": _toml_value(cfg.status.admin_token_file, base),
    }
    return tables


def _table(section: Any, base: Path) -> dict[str, Any]:
    return {f.name: _toml_value(getattr(section, f.name), base) for f in fields(section)}


def _toml_value(value: object, base: Path) -> Any:
    if value is None:
        return ""
    if isinstance(value, Path):
        return _relative(value, base)
    if isinstance(value, GpuSpec):
        return _table(value, base)
    if isinstance(value, tuple):
        return [_toml_value(item, base) for item in value]
    return value


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)
