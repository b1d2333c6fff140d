"""node.config: defaults, round trips, path resolution, and one precise error per mistake."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.config import (
    CONFIG_FILE,
    CapacitySection,
    ChainSection,
    ConfigError,
    GossipSection,
    LogSection,
    NetworkSection,
    NodeConfig,
    NodeSection,
    StatusSection,
    default_config,
    load_config,
    parse_config,
    render_config,
    write_config,
)
from p2p.announcements import GpuSpec
from p2p.identity import Identity
from p2p.transport import TransportConfig

REPO = Path(__file__).resolve().parents[2]
PEER = Identity.derive("config-test", 0).peer_id
PEER2 = Identity.derive("config-test", 1).peer_id
RSA_STYLE_PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
MINIMAL = '[node]\nname = "n1"\n'


def write(folder: Path, text: str, name: str = CONFIG_FILE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def full_config(base: Path) -> NodeConfig:
    """A config where every field differs from its default, so a round trip checks them all."""
    cfg = default_config(
        "gpu-box.7",
        listen_port=4001,
        status_port=9101,
        bootstrap=[
            f"/ip4/10.0.0.2/tcp/4001/p2p/{PEER}",
            f"/dns4/boot.example/tcp/4002/p2p/{PEER2}",
        ],
        gpus=[GpuSpec("RTX 4090", 2, 24_576), GpuSpec("A100-SXM4-80GB", 8, 81_920)],
        detect="auto",
        region="us-east",
        price_per_gpu_hour=1_250_000,
        chain_id="gpumesh-test-1",
        announce_interval_ms=1_500,
        announcement_ttl_ms=45_000,
        data_dir="state/db",
        key_file="/etc/gpumesh/operator.key",
        log_level="debug",
        log_format="text",
        log_file="logs/node.log",
        admin_token_file="secrets/admin.token",
        base_dir=base,
    )
    network = dataclasses.replace(
        cfg.network,
        listen=("/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"),
        publish_rate_per_s=50,
        inbox_max=64,
        request_timeout_ms=9_000,
        ping_interval_ms=2_000,
        ping_timeout_ms=1_500,
        ping_misses_max=5,
    )
    status = StatusSection("::1", 9101, cfg.status.admin_token_file)
    chain = ChainSection(
        genesis=base.resolve() / "net" / "genesis.toml",
        data_dir=base.resolve() / "chain",
        empty_block_ms=500,
        timeout_propose_ms=4_000,
        timeout_vote_ms=1_500,
        sync_interval_ms=2_000,
        snapshot_every=20,
    )
    return dataclasses.replace(cfg, network=network, status=status, chain=chain)


# ---------------------------------------------------------------------------------------------
# defaults, round trips, paths


def test_minimal_file_gets_every_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    folder = tmp_path.resolve()
    assert cfg == NodeConfig(
        path=folder / CONFIG_FILE,
        node=NodeSection("n1", folder / "node.key", folder / "data"),
    )
    assert cfg.network == NetworkSection(listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=())
    assert cfg.status == StatusSection("127.0.0.1", 0)
    assert cfg.capacity == CapacitySection("auto", 1_000_000, ())
    assert cfg.gossip == GossipSection(2_000, 30_000)
    assert cfg.log == LogSection("info", "json", None)
    assert (cfg.node.chain_id, cfg.node.region) == ("gpumesh-local", "eu-west")


def test_write_then_load_gives_an_equal_config(tmp_path: Path) -> None:
    cfg = full_config(tmp_path / "home")
    write_config(cfg.path, cfg)
    assert load_config(cfg.path) == cfg


def test_render_then_load_gives_an_equal_config(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)
    text = render_config(cfg, tmp_path)
    assert text.startswith("# gpumesh node configuration")
    assert load_config(write(tmp_path, text)) == cfg


def test_rendered_paths_are_relative_under_the_folder_and_absolute_outside(tmp_path: Path) -> None:
    text = render_config(full_config(tmp_path), tmp_path)
    raw = tomllib.loads(text)
    assert raw["node"]["data_dir"] == "state/db"
    assert raw["node"]["key_file"] == "/etc/gpumesh/operator.key"
    assert raw["log"]["file"] == "logs/node.log"
    assert raw["status"]["listen"] == "[::1]:9101"
    assert raw["status"]["admin_token_file"] == "secrets/admin.token"
    assert raw["chain"]["genesis"] == "net/genesis.toml"


def test_relative_paths_resolve_against_the_config_folder_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "nodes" / "a"
    write(
        folder,
        '[node]\nname = "a"\nkey_file = "keys/a.key"\ndata_dir = "../shared"\n'
        '[log]\nfile = "a.log"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "nodes" / "a" / CONFIG_FILE)
    root = tmp_path.resolve()
    assert cfg.path == root / "nodes" / "a" / CONFIG_FILE
    assert cfg.node.key_file == root / "nodes" / "a" / "keys" / "a.key"
    assert cfg.node.data_dir == root / "nodes" / "shared"
    assert cfg.log.file == root / "nodes" / "a" / "a.log"
    assert all(p.is_absolute() for p in (cfg.node.key_file, cfg.node.data_dir, cfg.log.file))


def test_empty_log_file_means_stderr(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + '[log]\nfile = ""\n'))
    assert cfg.log.file is None


def test_transport_config_carries_the_network_knobs(tmp_path: Path) -> None:
    tc = full_config(tmp_path).transport_config()
    assert tc == TransportConfig(
        publish_rate_per_s=50,
        inbox_max=64,
        request_timeout_ms=9_000,
        ping_interval_ms=2_000,
        ping_timeout_ms=1_500,
        ping_misses_max=5,
    )


def test_default_transport_config_matches_the_transport_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).transport_config() == TransportConfig()


def test_default_config_is_loopback_and_declares_only_when_given_gpus(tmp_path: Path) -> None:
    bare = default_config("n1", listen_port=4001, status_port=9101, base_dir=tmp_path)
    assert bare.network.listen == ("/ip4/127.0.0.1/tcp/4001",)
    assert (bare.status.host, bare.status.port) == ("127.0.0.1", 9101)
    assert bare.capacity.detect == "auto"
    assert bare.path == tmp_path.resolve() / CONFIG_FILE
    assert bare.node.key_file == tmp_path.resolve() / "node.key"
    gpus = (GpuSpec("L40S", 1, 46_068),)
    declared = default_config("n2", gpus=gpus, base_dir=tmp_path)
    assert (declared.capacity.detect, declared.capacity.gpus) == ("declared", gpus)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "no spaces"}, "node.name"),
        ({"name": "n", "bootstrap": ["/ip4/1.2.3.4/tcp/4001"]}, "network.bootstrap[0]"),
        ({"name": "n", "announce_interval_ms": 40_000}, "gossip.announcement_ttl_ms"),
        ({"name": "n", "gpus": [GpuSpec("A100", 1, 1)] * 2}, "capacity.gpus[1].model"),
        ({"name": "n", "status_port": 70_000}, "status.listen"),
    ],
)
def test_default_config_validates_like_a_file(
    tmp_path: Path, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        default_config(base_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_the_example_config_loads_and_its_bootstrap_line_is_valid() -> None:
    example = REPO / "examples" / "node.toml"
    cfg = load_config(example)
    assert cfg.node.name == "node-1"
    assert cfg.capacity.gpus == (GpuSpec("RTX 4090", 2, 24_576),)
    assert cfg.network.bootstrap == ()
    assert cfg.status.host == "127.0.0.1"
    text = example.read_text(encoding="utf-8").replace('    # "/ip4/', '    "/ip4/', 1)
    raw = tomllib.loads(text)
    uncommented = parse_config(raw, example.resolve())
    assert len(uncommented.network.bootstrap) == 1


def test_the_example_configs_commented_transport_knobs_are_the_defaults() -> None:
    """examples/node.toml shows the optional transport knobs "with their defaults": they must
    be the defaults (they had drifted: it said 1 s ping timeouts where the code waited 5 s)."""
    text = (REPO / "examples" / "node.toml").read_text(encoding="utf-8")
    shown = dict(re.findall(r"^# (\w+) = (\d+)", text, flags=re.MULTILINE))
    defaults = TransportConfig()
    knobs = {k: v for k, v in shown.items() if k in TransportConfig.__dataclass_fields__}
    assert {"inbox_max", "request_timeout_ms", "ping_timeout_ms", "ping_misses_max"} <= set(knobs)
    assert {k: int(v) for k, v in knobs.items()} == {k: getattr(defaults, k) for k in knobs}


_names = st.from_regex(r"[A-Za-z0-9._-]{1,32}", fullmatch=True)
_models = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    name=_names,
    region=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=32),
    price=st.integers(0, 2**64 - 1),
    interval=st.integers(1, 60_000),
    extra_ttl=st.integers(1, 60_000),
    models=st.lists(_models, max_size=16, unique_by=str.lower),
    count=st.integers(1, 1024),
    memory=st.integers(1, 2**24),
)
def test_any_valid_config_survives_render_and_parse(
    name: str,
    region: str,
    price: int,
    interval: int,
    extra_ttl: int,
    models: list[str],
    count: int,
    memory: int,
) -> None:
    base = Path("/srv/gpumesh/node")
    gpus = [GpuSpec(m, count, memory) for m in models]
    cfg = default_config(
        name,
        region=region,
        price_per_gpu_hour=price,
        announce_interval_ms=interval,
        announcement_ttl_ms=interval + extra_ttl,
        gpus=gpus,
        base_dir=base,
    )
    assert parse_config(tomllib.loads(render_config(cfg, base)), cfg.path) == cfg


# ---------------------------------------------------------------------------------------------
# every mistake names its field

NET = MINIMAL + "[network]\n"
CAP = MINIMAL + "[capacity]\n"
GPU = MINIMAL + '[[capacity.gpus]]\nmodel = "RTX 4090"\ncount = 1\n'
BAD = [
    # (toml, field, fragment of the problem)
    ("[node]\n", "node.name", "required"),
    ("[node]\nname = 5\n", "node.name", "expected a string, got 5"),
    ('[node]\nname = "my node"\n', "node.name", "'my node' is not a valid name"),
    (f'[node]\nname = "{"n" * 33}"\n', "node.name", "not a valid name"),
    ('[node]\nnmae = "n1"\n', "node.nmae", "unknown key; did you mean 'name'?"),
    (
        '[node]\nname = "n1"\n[[capacity.gpus]]\nmodel = "RTX\u00a04090"\nmemory_mib = 1\n',
        "capacity.gpus[0].model",
        "printable ASCII",
    ),
    ('[node]\nname = "n1"\nfoo = 1\n', "node.foo", "unknown key (known: name, key_file"),
    (MINIMAL + 'chain_id = ""\n', "node.chain_id", "1..64 printable ASCII"),
    (MINIMAL + 'chain_id = "a\\tb"\n', "node.chain_id", "printable ASCII"),
    (MINIMAL + f'region = "{"r" * 33}"\n', "node.region", "0..32 bytes"),
    (MINIMAL + 'key_file = ""\n', "node.key_file", "expected a file path"),
    (MINIMAL + "data_dir = 3\n", "node.data_dir", "expected a string, got 3"),
    ('name = "n1"\n[node]\n', "name", "put it under [node]"),
    (MINIMAL + "[netwrok]\n", "netwrok", "unknown section; did you mean 'network'?"),
    (MINIMAL + "network = 5\n", "node.network", "unknown key"),
    ('network = 5\n[node]\nname = "n"\n', "network", "expected a table, got 5"),
    (NET + 'listen = "/ip4/127.0.0.1/tcp/1"\n', "network.listen", "expected an array, got string"),
    (NET + "listen = []\n", "network.listen", "expected 1..8 addresses, got 0"),
    (NET + "listen = [1]\n", "network.listen[0]", "expected a string, got 1"),
    (NET + 'listen = ["/ip4/1.2.3.4/udp/5"]\n', "network.listen[0]", "must have the form"),
    (NET + 'listen = ["/ip4/1.2.3.4/tcp/1/tcp/2"]\n', "network.listen[0]", "must have the form"),
    (NET + f'listen = ["/ip4/1.2.3.4/tcp/1/p2p/{PEER}"]\n', "network.listen[0]", "the form"),
    (
        NET + 'listen = ["/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/1/"]\n',
        "network.listen[1]",
        "duplicate of network.listen[0]",
    ),
    (NET + 'listen = ["/ip4/127.0.0.1/tcp/99999"]\n', "network.listen[0]", "not a valid multiaddr"),
    (
        NET + 'bootstrap = ["/ip4/1.2.3.4/tcp/4001"]\n',
        "network.bootstrap[0]",
        "must end with /p2p/<peer id>",
    ),
    (NET + f'bootstrap = ["/ip4/1.2.3.4/tcp/0/p2p/{PEER}"]\n', "network.bootstrap[0]", "port 0"),
    (
        NET + f'bootstrap = ["/ip4/1.2.3.4/tcp/1/p2p/{RSA_STYLE_PEER}"]\n',
        "network.bootstrap[0]",
        "is not an ed25519 libp2p peer id",
    ),
    (
        NET + 'bootstrap = ["/ip4/1.2.3.4/tcp/1/p2p/abc"]\n',
        "network.bootstrap[0]",
        "not a valid multiaddr",
    ),
    (NET + f'bootstrap = ["/unix/tmp/s/p2p/{PEER}"]\n', "network.bootstrap[0]", "the form"),
    (NET + 'bootstrap = ""\n', "network.bootstrap", "expected an array"),
    (
        NET + "publish_rate_per_s = 0\n",
        "network.publish_rate_per_s",
        "expected a positive integer, got 0",
    ),
    (NET + 'publish_rate_per_s = "100"\n', "network.publish_rate_per_s", "got string '100'"),
    (NET + "inbox_max = true\n", "network.inbox_max", "got boolean true"),
    (NET + "request_timeout_ms = 1.5\n", "network.request_timeout_ms", "got float 1.5"),
    (NET + "ping_misses_max = 1000000\n", "network.ping_misses_max", "at most 1000"),
    (NET + "ping_timeout = 5\n", "network.ping_timeout", "did you mean 'ping_timeout_ms'?"),
    (MINIMAL + '[status]\nlisten = "0.0.0.0:9101"\n', "status.listen", "not a loopback"),
    (MINIMAL + '[status]\nlisten = "10.0.0.1:9101"\n', "status.listen", "not a loopback"),
    (MINIMAL + '[status]\nlisten = "[::]:9101"\n', "status.listen", "not a loopback"),
    (MINIMAL + '[status]\nlisten = "example.com:80"\n', "status.listen", "not a loopback"),
    (MINIMAL + '[status]\nlisten = "127.0.0.1"\n', "status.listen", "expected HOST:PORT"),
    (MINIMAL + '[status]\nlisten = "127.0.0.1:-1"\n', "status.listen", "expected HOST:PORT"),
    (MINIMAL + '[status]\nlisten = "127.0.0.1:70000"\n', "status.listen", "port must be 0..65535"),
    (MINIMAL + '[status]\nlisten = "::1:9101"\n', "status.listen", "in brackets"),
    (MINIMAL + "[status]\nlisten = 9101\n", "status.listen", "expected a string"),
    (MINIMAL + "[status]\nadmin_token_file = 1\n", "status.admin_token_file", "expected a string"),
    (MINIMAL + "[status]\nadmin_token = 'x'\n", "status.admin_token", "did you mean"),
    (MINIMAL + "[chain]\ngenesys = 'g.toml'\n", "chain.genesys", "did you mean 'genesis'?"),
    (MINIMAL + "[chain]\ngenesis = 3\n", "chain.genesis", "expected a string, got 3"),
    (MINIMAL + "[chain]\nempty_block_ms = 0\n", "chain.empty_block_ms", "positive integer"),
    (
        MINIMAL + "[chain]\nempty_block_ms = 3000\n",
        "chain.empty_block_ms",
        "must be below chain.timeout_propose_ms (3000), got 3000",
    ),
    (MINIMAL + "[chain]\nsnapshot_every = -1\n", "chain.snapshot_every", "positive integer"),
    (CAP + 'detect = "cuda"\n', "capacity.detect", "expected one of 'auto', 'nvidia-smi'"),
    (
        CAP + "price_per_gpu_hour = -1\n",
        "capacity.price_per_gpu_hour",
        "expected a non-negative integer, got -1",
    ),
    (CAP + 'gpus = "RTX 4090"\n', "capacity.gpus", "expected an array"),
    (CAP + "gpus = [1]\n", "capacity.gpus[0]", "expected a table, got 1"),
    (
        CAP
        + "gpus = ["
        + ", ".join(f'{{model = "m{i}", memory_mib = 1}}' for i in range(17))
        + "]\n",
        "capacity.gpus",
        "at most 16 models",
    ),
    (
        GPU + "memory_mib = -4\n",
        "capacity.gpus[0].memory_mib",
        "expected a positive integer, got -4",
    ),
    (GPU, "capacity.gpus[0].memory_mib", "required"),
    (GPU + "memory_mib = 16777217\n", "capacity.gpus[0].memory_mib", "at most 16777216"),
    (
        GPU.replace("count = 1", "count = 0") + "memory_mib = 1\n",
        "capacity.gpus[0].count",
        "expected a positive integer, got 0",
    ),
    (
        GPU.replace('model = "RTX 4090"\n', "") + "memory_mib = 1\n",
        "capacity.gpus[0].model",
        "required",
    ),
    (GPU.replace('"RTX 4090"', '""') + "memory_mib = 1\n", "capacity.gpus[0].model", "1..64 bytes"),
    (GPU + "memory = 1\n", "capacity.gpus[0].memory", "did you mean 'memory_mib'?"),
    (
        GPU + 'memory_mib = 1\n[[capacity.gpus]]\nmodel = "rtx 4090"\nmemory_mib = 1\n',
        "capacity.gpus[1].model",
        "already declared in capacity.gpus[0]",
    ),
    (
        MINIMAL + "[gossip]\nannounce_interval_ms = 5000\nannouncement_ttl_ms = 5000\n",
        "gossip.announcement_ttl_ms",
        "must exceed gossip.announce_interval_ms (5000), got 5000",
    ),
    (
        MINIMAL + "[gossip]\nannouncement_ttl_ms = 1000\n",
        "gossip.announcement_ttl_ms",
        "must exceed gossip.announce_interval_ms (2000)",
    ),
    (
        MINIMAL + "[gossip]\nannouncement_ttl_ms = 120001\n",
        "gossip.announcement_ttl_ms",
        "at most 120000",
    ),
    (
        MINIMAL + "[gossip]\nannounce_interval_ms = 0\n",
        "gossip.announce_interval_ms",
        "expected a positive integer, got 0",
    ),
    (MINIMAL + '[log]\nlevel = "verbose"\n', "log.level", "expected one of 'debug', 'info'"),
    (MINIMAL + '[log]\nformat = "xml"\n', "log.format", "got 'xml'"),
    (MINIMAL + "[log]\nfile = 3\n", "log.file", "expected a string, got 3"),
]


@pytest.mark.parametrize(("text", "field", "fragment"), BAD)
def test_each_mistake_names_the_file_and_its_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, field: str, fragment: str
) -> None:
    write(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(Path(CONFIG_FILE))
    err = caught.value
    assert err.field == field
    assert fragment in err.problem
    assert str(err) == f"{CONFIG_FILE}: {field}: {err.problem}"


def test_error_messages_read_exactly_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, NET + 'listen = ["/ip4/127.0.0.1/tcp/1", "/ip4/1.2.3"]\n')
    with pytest.raises(
        ConfigError,
        match=r"^node\.toml: network\.listen\[1\]: '/ip4/1\.2\.3' is "
        r"not a valid multiaddr$",
    ):
        load_config(Path(CONFIG_FILE))
    write(tmp_path, GPU + "memory_mib = -4\n")
    with pytest.raises(
        ConfigError,
        match=r"^node\.toml: capacity\.gpus\[0\]\.memory_mib: "
        r"expected a positive integer, got -4$",
    ):
        load_config(Path(CONFIG_FILE))


def test_invalid_toml_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nname = "n1"\nregion = eu-west\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.field is None
    assert "invalid TOML" in caught.value.problem and "line 3" in caught.value.problem
    assert str(caught.value).startswith(f"{path}: invalid TOML")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml: file not found$"):
        load_config(path)


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE
    path.write_bytes(b'[node]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_loopback_status_hosts_are_accepted(tmp_path: Path) -> None:
    for listen, host in [
        ("127.0.0.1:1", "127.0.0.1"),
        ("127.8.9.10:2", "127.8.9.10"),
        ("[::1]:3", "::1"),
        ("localhost:4", "localhost"),
    ]:
        cfg = load_config(write(tmp_path, MINIMAL + f'[status]\nlisten = "{listen}"\n'))
        assert cfg.status.host == host
        assert cfg.status.listen == listen


def test_admin_token_file_is_off_by_default_and_resolves_against_the_config_folder(
    tmp_path: Path,
) -> None:
    assert load_config(write(tmp_path, MINIMAL)).status.admin_token_file is None
    off = load_config(write(tmp_path, MINIMAL + '[status]\nadmin_token_file = ""\n'))
    assert off.status.admin_token_file is None
    on = load_config(write(tmp_path / "n", MINIMAL + '[status]\nadmin_token_file = "../t"\n'))
    assert on.status.admin_token_file == tmp_path.resolve() / "t"


def test_admin_token_file_must_be_private_and_a_real_token(tmp_path: Path) -> None:
    from node.status_http import read_admin_token

    token = tmp_path / "admin.token"
    config = tmp_path / CONFIG_FILE
    with pytest.raises(ConfigError, match="file not found") as missing:
        read_admin_token(token, config)
    assert missing.value.field == "status.admin_token_file"
    token.write_text("a" * 64 + "\n")
    token.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_admin_token(token, config)
    token.chmod(0o600)
    assert read_admin_token(token, config) == b"a" * 64
    for bad in ("short", "a" * 40 + " " + "b" * 40):
        token.write_text(bad)
        with pytest.raises(ConfigError, match="printable characters without spaces"):
            read_admin_token(token, config)
