"""CLI verbs of the HTTP service: ``lapsv serve MODEL --db SPEAKERS.db`` and
``lapsv serve keys add / list / remove``.

FastAPI and uvicorn (the ``lapsv[serve]`` extra) are imported only when a server starts:
every other verb, and ``lapsv --help``, work without them.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import socket
import sys

import torch

from lapsv.cli import options
from lapsv.errors import ConfigError
from lapsv.inference import DEFAULT_MAX_SECONDS
from lapsv.serve.app import create_app
from lapsv.serve.keys import ROLES, KeysError, KeyStore
from lapsv.serve.limits import Limits
from lapsv.serve.service import Service
from lapsv.speaker import load_model

DEFAULT_KEYS = "keys.toml"
EXTRA = {
    "fastapi": ("fastapi",),
    "uvicorn": ("uvicorn",),
    "python-multipart": ("python_multipart", "multipart"),
}


class _ModelOrAction(argparse._SubParsersAction):
    """``lapsv serve MODEL ...`` runs the server, ``lapsv serve keys ...`` manages keys: a
    first word that is not an action names the model (``serve run MODEL``).

    argparse cannot give one parser a positional and sub-verbs, and it checks a sub-verb
    against ``choices`` before calling the action; so ``choices`` is None here (any word
    passes) and the sub-verbs are read from ``_name_parser_map``, the private map of this
    class. lapsv touches it nowhere else.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.choices = None

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if values and values[0] not in self._name_parser_map:
            values = ["run", *values]
        super().__call__(parser, namespace, values, option_string)


_option = options.flag


def _port(value: str) -> int:
    number = options.count(1)(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1 to 65535, got {number}")
    return number


def _keys_file(value: str) -> str:
    """An existing keys file; the error says how to make one."""
    try:
        return options.input_file(value)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(
            f"{error}; make a key first: lapsv serve keys add NAME --role admin --keys {value}"
        ) from None


def add_serve_parser(verbs: argparse._SubParsersAction) -> None:
    """The ``serve`` verb: ``serve MODEL ...`` (also ``serve run MODEL``) and ``serve keys``."""
    serve = verbs.add_parser(
        "serve",
        help="HTTP service: verify, identify and enrol over a JSON API with keys and limits, "
        "and a browser page (needs lapsv[serve])",
        description="lapsv serve MODEL --db SPEAKERS.db [--host 127.0.0.1] [--port 8000] "
        "[--keys keys.toml] runs the service; lapsv serve keys add NAME --role verify|admin "
        "makes an API key.",
    )
    actions = serve.add_subparsers(
        dest="serve_action", metavar="MODEL | keys", action=_ModelOrAction, required=True
    )
    run = actions.add_parser("run", help="serve MODEL (the default: `lapsv serve MODEL ...`)")
    _add_run_options(run)
    run.set_defaults(func=cmd_serve)
    keys = actions.add_parser("keys", help="add, list or remove API keys")
    key_actions = keys.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    add = key_actions.add_parser("add", help="make a key and print it (only this once)")
    add.add_argument("name", help="a label for the key: who or what uses it")
    add.add_argument("--role", choices=ROLES, required=True, help="verify, or admin (enrol too)")
    listing = key_actions.add_parser("list", help="the keys' names, roles and ids")
    remove = key_actions.add_parser("remove", help="delete a key (a running server notices)")
    remove.add_argument("name", help="the key's label")
    for parser in (add, listing, remove):
        parser.add_argument(
            "--keys", type=options.output_file(), default=DEFAULT_KEYS, help="the keys file"
        )
    keys.set_defaults(func=cmd_serve_keys)


def _add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "model", help="model directory, hub id, built-in name (ge2e), or a `lapsv export` file"
    )
    run.add_argument(
        "--db",
        type=options.output_file(),
        required=True,
        help="speaker database file (created if missing)",
    )
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (this machine only)")
    run.add_argument("--port", type=_port, default=8000, help="TCP port to listen on")
    run.add_argument(
        "--keys",
        type=_keys_file,
        default=DEFAULT_KEYS,
        help="API keys file (make keys with `lapsv serve keys add NAME --role ...`)",
    )
    run.add_argument(
        "--threshold",
        type=options.finite,
        help="decision threshold when a request gives none (default: LLR 0 if calibrated)",
    )
    _add_limit_options(run)


def _add_limit_options(run: argparse.ArgumentParser) -> None:
    defaults = Limits()
    _option(
        run,
        "max_body_mb",
        type=options.at_least(0.001),
        default=defaults.max_body_mb,
        help="largest request body in MB",
    )
    _option(
        run,
        "max_audio_seconds",
        type=options.at_least(1.0),
        default=defaults.max_audio_seconds,
        help="longest audio of one request",
    )
    _option(
        run,
        "max_concurrent",
        type=options.count(1),
        default=defaults.max_concurrent,
        help="requests in progress per key",
    )
    _option(
        run,
        "rate_limit",
        type=options.count(0),
        default=defaults.rate_limit,
        help="requests per key per minute (0: no limit)",
    )
    _option(
        run,
        "cors_origin",
        action="append",
        default=[],
        help="a browser origin allowed to call the API (repeatable; none by default)",
    )
    _option(
        run,
        "max_batch",
        type=options.count(1),
        default=32,
        help="most recordings of concurrent requests gathered into one batch",
    )
    _option(
        run,
        "batch_size",
        type=options.count(1),
        default=8,
        help="recordings per forward pass of the model (as lapsv embed --batch_size)",
    )
    _option(
        run,
        "max_wait_ms",
        type=options.at_least(0.0),
        default=5.0,
        help="how long a batch waits for more recordings",
    )
    _option(
        run,
        "max_seconds",
        type=options.at_least(1.0),
        default=DEFAULT_MAX_SECONDS,
        help="longer recordings are embedded in windows of this many seconds, averaged",
    )
    _option(run, "log_level", choices=("debug", "info", "warning", "error"), default="info")
    run.add_argument("--device", type=options.device, default="cpu", help="cpu, cuda, cuda:1, mps")
    run.add_argument(
        "--threads",
        type=options.count(0),
        default=0,
        help="torch threads of the model on CPU (0: torch's default, one per core); on a "
        "machine shared with other work, 1 can be faster",
    )
    _option(
        run,
        "trust_pickle",
        action="store_true",
        help="allow pickle weights (.pt/.bin/.ckpt); only for files you trust",
    )


def _missing_extra() -> list[str]:
    """The packages of ``lapsv[serve]`` that cannot be imported."""

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):
            return True

    return [name for name, modules in EXTRA.items() if all(absent(m) for m in modules)]


def _check_listen(host: str, port: int) -> None:
    """Fail now, with a one-line reason, if ``host:port`` cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as error:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --port"
        ) from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    missing = _missing_extra()
    if missing:
        raise ConfigError(
            f"lapsv serve needs {', '.join(missing)}: install lapsv[serve] "
            "(pip install 'lapsv[serve]')"
        )
    keys = KeyStore(args.keys)
    if not keys.keys():
        raise KeysError(
            f"{args.keys} holds no API key; make one with "
            f"`lapsv serve keys add NAME --role admin --keys {args.keys}`"
        )
    options.prepare_output(args.db, what="speaker database")
    _check_listen(args.host, args.port)
    limits = Limits(
        max_body_mb=args.max_body_mb,
        max_audio_seconds=args.max_audio_seconds,
        max_concurrent=args.max_concurrent,
        rate_limit=args.rate_limit,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, trust_pickle=args.trust_pickle)
    service = Service(
        model,
        args.db,
        model_name=str(args.model),
        limits=limits,
        threshold=args.threshold,
        max_batch=args.max_batch,
        batch_size=args.batch_size,
        max_wait_ms=args.max_wait_ms,
        max_seconds=args.max_seconds,
    )
    app = create_app(service, keys=keys, cors_origins=tuple(args.cors_origin))
    import uvicorn  # the serve extra, checked above

    url = f"http://{args.host}:{args.port}/"
    print(
        f"serving {args.model} [model {model.model_id}] with {args.db} at {url} (page) and "
        f"{url}docs (API); {len(keys.keys())} key(s) in {args.keys}\n"
        f"limits: body {limits.max_body_mb:g} MB, audio {limits.max_audio_seconds:g} s, "
        f"{limits.max_concurrent} concurrent and "
        f"{limits.rate_limit or 'unlimited'} per minute per key; batches of up to "
        f"{args.max_batch} recordings ({args.batch_size} per forward pass), waiting up to "
        f"{args.max_wait_ms:g} ms",
        flush=True,
    )
    if not _loopback(args.host):
        print(
            f"warning: listening on {args.host}, reachable from other machines, without TLS: "
            "put a TLS reverse proxy in front (docs/serving.md)",
            file=sys.stderr,
        )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, server_header=False)
    return 0


def cmd_serve_keys(args: argparse.Namespace) -> int:
    store = KeyStore(args.keys)
    if args.keys_action == "add":
        options.prepare_output(args.keys, what="keys file")
        key = store.add(args.name, role=args.role)
        print(
            f"added key {args.name!r} (role {args.role}) to {args.keys}; the key is shown only "
            "now, keep it secret:",
            file=sys.stderr,
        )
        print(key)
        return 0
    if args.keys_action == "remove":
        removed = store.remove(args.name)
        print(
            f"removed key {removed.name!r} (role {removed.role}, id {removed.id}) from "
            f"{args.keys}; a running server refuses it from its next request"
        )
        return 0
    entries = store.keys()
    print(f"{args.keys}: {len(entries)} key(s)")
    for entry in entries:
        print(f"  {entry.name:<24} {entry.role:<7} id {entry.id}  created {entry.created}")
    return 0
