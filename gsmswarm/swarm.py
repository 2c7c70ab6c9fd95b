"""A private Petals swarm on 127.0.0.1: a DHT bootstrap peer plus servers that split the model's blocks.

Petals' and hivemind's defaults are unsafe on a shared machine: servers listen on every IPv4 and IPv6
interface, an empty `initial_peers` joins the public swarm, `--throughput auto` runs an internet speed test,
the server checks PyPI for a newer version, and p2pd starts with NAT port mapping (UPnP/NAT-PMP to the LAN)
and AutoNAT.
Everything started here overrides each of those; `LOOPBACK_P2P` is the one place that says how.

    python -m gsmswarm.swarm dht --peers-file PATH            # bootstrap peer; writes its address to PATH
    python -m gsmswarm.swarm server MODEL --block-indices 0:15 --initial-peers ADDR --dht-prefix NAME
    python -m gsmswarm.swarm local --model smollm2-135m --num-servers 2   # both, until Ctrl-C
"""
import argparse
import contextlib
import gc
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

log = logging.getLogger(__name__)

def p2p_settings(host: str = "127.0.0.1", port: int = 0, public_ip: Optional[str] = None) -> dict:
    """hivemind p2p settings for every DHT we start, server or client. The defaults are loopback-only; a GPU
    node of a private swarm listens on `host:port` and announces `public_ip:port` to the other nodes."""
    return dict(
        host_maddrs=[f"/ip4/{host}/tcp/{port}"],
        announce_maddrs=[f"/ip4/{public_ip}/tcp/{port}"] if public_ip else None,  # None: what we listen on
        nat_port_map=False,  # no UPnP/NAT-PMP packets to the LAN
        auto_nat=False,  # no AutoNAT service
        use_relay=False,  # no circuit relays: every peer is directly reachable
        use_auto_relay=False,  # do not look for relays
    )


LOOPBACK_P2P = p2p_settings()
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# Petals sizes a server's attention cache for 16,384 tokens (4,096 without grouped-query attention): two
# self-consistency sessions of 8 rows x ~1,000 tokens. The client asks for no wait, so a session that finds
# no room fails at once, and the engine keeps 4 requests in flight. The cache is a limit that sessions
# allocate from, not memory taken at start.
ATTN_CACHE_TOKENS = 65536


@contextlib.contextmanager
def gc_frozen():
    """Fork hivemind's DHT process inside this. A forked child that garbage-collects an object inherited from
    its parent can hang forever: a Chroma client that was garbage at fork time stops its Rust runtime when
    collected and waits for threads that do not exist after fork (CI hung so after the retrieval tests;
    every DHT request then waited forever). Frozen objects are exempt from collection, in the child too, as
    the `gc.freeze` docs advise for fork-based servers."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def dht_prefix_for(model: str) -> str:
    """A DHT prefix for a local folder (Petals needs one; '.' and ' ' are delimiters in its DHT keys)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", Path(model).name).strip("-") or "model"


def split_blocks(num_blocks: int, num_servers: int) -> List[str]:
    """Contiguous `a:b` ranges, one per server, covering every block once."""
    if not 1 <= num_servers <= num_blocks:
        raise ValueError(f"cannot split {num_blocks} blocks over {num_servers} servers")
    edges = [round(i * num_blocks / num_servers) for i in range(num_servers + 1)]
    return [f"{a}:{b}" for a, b in zip(edges, edges[1:])]


def block_range(spec: str) -> range:
    """The blocks of one `a:b` range of `split_blocks`."""
    start, end = map(int, spec.split(":"))
    return range(start, end)


def _interrupt_on_sigterm() -> None:
    # A background job of a non-interactive shell starts with SIGINT ignored: restore it, and treat SIGTERM
    # the same, so both reach the clean shutdown that also stops p2pd and the handler processes.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


def run_dht(peers_file: Path, identity_path: Optional[str], p2p: dict = LOOPBACK_P2P) -> None:
    from hivemind import DHT

    _interrupt_on_sigterm()
    dht = DHT(start=True, initial_peers=[], identity_path=identity_path, **p2p)
    try:
        addrs = [str(a) for a in dht.get_visible_maddrs()]
        tmp = peers_file.with_suffix(".tmp")
        tmp.write_text("\n".join(addrs) + "\n")
        tmp.rename(peers_file)  # readers never see a half-written file
        print(f"dht ready: {' '.join(addrs)}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        dht.shutdown()


def run_server(model: str, block_indices: Optional[str], initial_peers: Sequence[str], dht_prefix: str,
               throughput: float, torch_dtype: str, device: str, num_blocks: Optional[int] = None,
               quant_type: str = "none", p2p: dict = LOOPBACK_P2P,
               attn_cache_tokens: int = ATTN_CACHE_TOKENS) -> None:
    from petals.server.server import Server
    from petals.utils.convert_block import QuantType

    _interrupt_on_sigterm()
    if not initial_peers:
        raise SystemExit("error: --initial-peers is empty; refusing to join the public swarm")
    server = Server(
        converted_model_name_or_path=model, dht_prefix=dht_prefix, block_indices=block_indices,
        num_blocks=num_blocks, initial_peers=list(initial_peers),
        throughput=throughput,  # numeric: no internet speed test
        torch_dtype=torch_dtype, device=device, quant_type=QuantType[quant_type.upper()],
        attn_cache_tokens=attn_cache_tokens,
        reachable_via_relay=False,  # skip the reachability probe
        skip_reachability_check=True,  # never call the public health service
        **p2p,
    )  # and no petals.utils.version.validate_version(): that is what calls PyPI at start
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


class LoopbackSwarm:
    """Start a DHT and `num_servers` servers on 127.0.0.1 for `model`; stop them on exit.

    Example:
        with LoopbackSwarm(model_path, workdir) as swarm:
            backend = load_backend("petals", model_path, initial_peers=swarm.initial_peers)
    """

    def __init__(self, model: str, workdir: Path, num_servers: int = 2, timeout: float = 240,
                 torch_dtype: str = "float32", block_ranges: Optional[Sequence[str]] = None):
        """`block_ranges` (e.g. ["0:30", "0:30"]: two replicas) overrides the even split into `num_servers`."""
        from transformers import AutoConfig

        self.model, self.workdir, self.timeout = model, Path(workdir), timeout
        self.num_blocks = AutoConfig.from_pretrained(model).num_hidden_layers
        self.block_ranges = list(block_ranges or split_blocks(self.num_blocks, num_servers))
        self.dht_prefix = dht_prefix_for(model)
        self.torch_dtype = torch_dtype
        self.procs: List[subprocess.Popen] = []
        self.initial_peers: List[str] = []

    @property
    def peers_file(self) -> Path:
        return self.workdir / "initial_peers.txt"

    def _spawn(self, name: str, args: List[str]) -> subprocess.Popen:
        logf = open(self.workdir / f"{name}.log", "wb")
        env = {**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1", "HIVEMIND_LOGLEVEL": "INFO"}
        proc = subprocess.Popen([sys.executable, "-m", "gsmswarm.swarm", *args], stdout=logf,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        proc.name = name
        self.procs.append(proc)
        return proc

    def _check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                tail = (self.workdir / f"{proc.name}.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"swarm {proc.name} exited with code {proc.returncode}: " + " | ".join(tail))

    def start(self) -> "LoopbackSwarm":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.peers_file.unlink(missing_ok=True)
        deadline = time.monotonic() + self.timeout
        try:
            self._spawn("dht", ["dht", "--peers-file", str(self.peers_file)])
            while not self.peers_file.exists():
                self._check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"DHT did not start within {self.timeout:.0f}s; see {self.workdir}/dht.log")
                time.sleep(0.2)
            self.initial_peers = self.peers_file.read_text().split()
            for i in range(len(self.block_ranges)):
                self._spawn_server(i)
            # every server, not just one per block: a client that starts while a replica is still loading never
            # lists it, and a test that kills the serving replica then finds no other
            self._wait_until_served(deadline, self._servers_per_block())
        except BaseException:
            self.stop()
            raise
        log.info("loopback swarm up: %d servers %s, peers in %s", len(self.block_ranges), self.block_ranges,
                 self.peers_file)
        return self

    def _spawn_server(self, i: int) -> subprocess.Popen:
        return self._spawn(f"server{i}", ["server", self.model, "--block-indices", self.block_ranges[i],
                                          "--dht-prefix", self.dht_prefix, "--torch-dtype", self.torch_dtype,
                                          "--initial-peers", *self.initial_peers])

    def restart_server(self, name: str) -> subprocess.Popen:
        """Start server `name` (e.g. "server1") again on its blocks after it died; return once it serves them.
        What an operator does after a node failure; the fault tests use it. The dead server's DHT record
        stays ONLINE until it expires, so only a peer that was not announced before the restart counts."""
        [dead] = [p for p in self.procs if p.name == name]
        if dead.poll() is None:
            raise RuntimeError(f"swarm {name} is still running")
        i = int(name.removeprefix("server"))
        blocks = block_range(self.block_ranges[i])
        with self._client_dht() as dht:
            known = {peer for info in self._module_infos(dht, blocks) for peer in info.servers}
        self.procs.remove(dead)
        proc = self._spawn_server(i)
        self._wait_until_served(time.monotonic() + self.timeout, {b: 1 for b in blocks}, ignore=known)
        return proc

    def _servers_per_block(self) -> Dict[int, int]:
        need = {b: 0 for b in range(self.num_blocks)}
        for r in self.block_ranges:
            for b in block_range(r):
                need[b] += 1
        return need

    @contextlib.contextmanager
    def _client_dht(self):
        from hivemind import DHT

        with gc_frozen():
            dht = DHT(start=True, initial_peers=self.initial_peers, client_mode=True, **LOOPBACK_P2P)
        try:
            yield dht
        finally:
            dht.shutdown()

    def _module_infos(self, dht, blocks: range) -> list:
        from petals.utils.dht import get_remote_module_infos

        return get_remote_module_infos(dht, [f"{self.dht_prefix}.{b}" for b in blocks], latest=True)

    def _wait_until_served(self, deadline: float, need: Dict[int, int], ignore: frozenset = frozenset()):
        """Wait until each block b of `need` has need[b] ONLINE servers that are not one of `ignore`."""
        from petals.data_structures import ServerState

        blocks = sorted(need)
        with self._client_dht() as dht:
            while True:
                self._check_alive()
                infos = self._module_infos(dht, blocks)
                online = [sum(s.state == ServerState.ONLINE and peer not in ignore for peer, s in info.servers.items())
                          for info in infos]
                if all(n >= need[b] for b, n in zip(blocks, online)):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"servers did not serve every block within {self.timeout:.0f}s; "
                                       f"see {self.workdir}/server*.log")
                time.sleep(1)

    def stop(self) -> None:
        """SIGINT first (clean: also stops p2pd), then the whole process group if it lingers."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log.warning("swarm %s ignored SIGINT; killing its process group", proc.name)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # leftover p2pd/handler children share the group
            except ProcessLookupError:
                pass
            proc.wait()
        self.procs.clear()

    def pids(self) -> List[int]:
        """Every process of the swarm, children (p2pd, handlers) included."""
        import psutil

        out = []
        for proc in self.procs:
            try:
                p = psutil.Process(proc.pid)
                out += [p.pid] + [c.pid for c in p.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return out

    def __enter__(self) -> "LoopbackSwarm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_local(model: str, num_servers: int, workdir: Path) -> None:
    from .convert import resolve_model

    _interrupt_on_sigterm()
    try:  # around everything: Ctrl-C may come at any moment, even right after the address is printed
        with LoopbackSwarm(resolve_model(model), workdir, num_servers) as swarm:
            print(f"swarm ready: {len(swarm.block_ranges)} servers {swarm.block_ranges}, logs in {workdir}\n"
                  f"export INITIAL_PEERS=\"{' '.join(swarm.initial_peers)}\"  # also in {swarm.peers_file}\n"
                  f"Ctrl-C stops the swarm.", flush=True)
            while all(p.poll() is None for p in swarm.procs):
                time.sleep(1)
            swarm._check_alive()
    except KeyboardInterrupt:
        print("swarm stopped", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gsmswarm.swarm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role", required=True)
    d = sub.add_parser("dht", help="run a DHT bootstrap peer (127.0.0.1 unless --host)")
    d.add_argument("--peers-file", type=Path, required=True, help="where to write this peer's multiaddrs")
    d.add_argument("--identity-path", default=None, help="private key file: fixes the peer id across restarts")
    s = sub.add_parser("server", help="serve some blocks of MODEL (127.0.0.1 unless --host)")
    s.add_argument("model", help="local model folder (or hub id)")
    blocks = s.add_mutually_exclusive_group(required=True)
    blocks.add_argument("--block-indices", help="half-open range of blocks, e.g. 0:15")
    blocks.add_argument("--num-blocks", type=int, help="serve this many blocks, chosen where the swarm needs them")
    s.add_argument("--initial-peers", nargs="+", required=True, help="multiaddrs of the DHT bootstrap peer")
    s.add_argument("--dht-prefix", required=True, help="model name under which blocks are announced")
    s.add_argument("--throughput", type=float, default=1.0, help="announced throughput (numeric: no speed test)")
    s.add_argument("--torch-dtype", default="float32", help="float32 keeps swarm and local outputs identical")
    s.add_argument("--quant-type", default="none", choices=["none", "int8", "nf4"], help="weight quantization (GPU)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--attn-cache-tokens", type=int, default=ATTN_CACHE_TOKENS,
                   help="attention cache, in tokens summed over every session's rows (Petals' default: 16384 "
                        "with grouped-query attention, 4096 without)")
    for p in (d, s):
        p.add_argument("--host", default="127.0.0.1", help="IPv4 address to listen on (0.0.0.0 on a GPU node)")
        p.add_argument("--port", type=int, default=0, help="TCP port to listen on (0: any free port)")
        p.add_argument("--public-ip", default=None, help="address other nodes reach this one at (GPU node)")
    loc = sub.add_parser("local", help="a whole swarm (DHT + servers) on 127.0.0.1, until Ctrl-C")
    loc.add_argument("--model", default="smollm2-135m", help="embedded model name, local folder or hub id")
    loc.add_argument("--num-servers", type=int, default=2, help="servers that split the blocks")
    loc.add_argument("--workdir", type=Path, default=Path(".cache/swarm/local"), help="logs and initial_peers.txt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.update(OFFLINE_ENV)
    if args.role == "local":
        run_local(args.model, args.num_servers, args.workdir)
        return
    p2p = p2p_settings(args.host, args.port, args.public_ip)
    if args.role == "dht":
        run_dht(args.peers_file, args.identity_path, p2p)
    else:
        run_server(args.model, args.block_indices, args.initial_peers, args.dht_prefix, args.throughput,
                   args.torch_dtype, args.device, args.num_blocks, args.quant_type, p2p, args.attn_cache_tokens)


if __name__ == "__main__":
    main()
