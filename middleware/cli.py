"""The `persona` command: serve, worker, import, induce, segments learn, eval, report, forget, export, and the `lora`
reranker's train-reward-head and train-adapters."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import typer

if TYPE_CHECKING:
    from middleware.services import Services

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

app = typer.Typer(help="persona-middleware: personalization proxy for OpenAI-compatible apps.")
log = logging.getLogger("middleware")

TenantOpt = Annotated[str, typer.Option(help="tenant the user belongs to")]
FormatOpt = Annotated[
    str, typer.Option(help="file format: native | personalrewardbench | summarize-from-feedback")
]


def settings() -> Any:
    from middleware.config import Settings

    return Settings()


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_with_services(command: str, work: Callable[[Services], Awaitable[dict[str, Any]]]) -> None:
    """Run `work` with the services built from the settings (closed afterwards) and print its JSON
    result; a PersonaError is printed as `persona <command>: <message>` and exits 1."""
    from middleware.errors import PersonaError
    from middleware.services import build_services

    async def run() -> dict[str, Any]:
        services = build_services(settings())
        try:
            return await work(services)
        finally:
            await services.close()

    configure_logging()
    try:
        result = asyncio.run(run())
    except PersonaError as exc:
        typer.echo(f"persona {command}: {exc.message}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(json.dumps(result, indent=2))


def masked_url(url: str) -> str:
    """The URL with any password (in the user part or a `password=` / `sentinel_password=` query
    field) shown as ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = urlencode(
        [
            (k, "***" if k.lower().endswith("password") else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def log_setup(cfg: Any) -> None:
    """Say which Redis and which upstream this server uses (and what to set when there is none)."""
    from middleware.rerank.lora.base import extra_available
    from middleware.upstream import UPSTREAM_SETTINGS_HINT

    log.info("Redis: %s", masked_url(cfg.redis_url))
    if cfg.lora_wanted() and not extra_available():
        log.warning(
            "The settings use the lora reranker but its extra is not installed: "
            "pip install 'persona-middleware[lora]' (scripts/serve.sh installs it for these settings)"
        )
    aliases = ", ".join(f"{public} -> {upstream}" for public, upstream in cfg.model_aliases.items()) or "none"
    key = "with" if cfg.upstream_api_key.get_secret_value() else "without"
    if cfg.upstream_api_base:
        log.info(
            "Upstream: %s (%s, %s PERSONA_UPSTREAM_API_KEY); model aliases: %s",
            masked_url(cfg.upstream_api_base),
            cfg.upstream_mode,
            key,
            aliases,
        )
        return
    provider_keys = sorted(
        name for name in os.environ if name.endswith("_API_KEY") and not name.startswith("PERSONA_")
    )
    if cfg.upstream_api_key.get_secret_value() or provider_keys:
        log.info(
            "Upstream: litellm, the provider named by each model (%s); model aliases: %s",
            "PERSONA_UPSTREAM_API_KEY" if key == "with" else ", ".join(provider_keys),
            aliases,
        )
        return
    log.warning(
        "No upstream LLM configured: %s. Until then, calls to models without a provider prefix answer "
        "503 upstream_not_configured.",
        UPSTREAM_SETTINGS_HINT,
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help="log level")] = "info",
) -> None:
    """Run the proxy (uvloop + httptools). Starts a local redis-server if none is reachable."""
    import uvicorn

    from middleware.embedded_redis import redis_available

    configure_logging(log_level.upper())
    cfg = settings()
    log_setup(cfg)
    with (
        redis_available(cfg.redis_url, Path(cfg.data_dir), allowed=cfg.embedded_redis),
        shared_metrics(workers),
    ):
        uvicorn.run(
            "middleware.asgi:app",
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level=log_level,
            # The client's address and scheme are never used, so uvicorn's X-Forwarded-* rewriting
            # only runs where an operator asks for it (FORWARDED_ALLOW_IPS, uvicorn's own variable).
            proxy_headers="FORWARDED_ALLOW_IPS" in os.environ,
        )


@contextmanager
def shared_metrics(workers: int) -> Iterator[None]:
    """With several worker processes, their metrics go through one multiprocess folder (so /metrics,
    whichever process answers it, shows the sums): PROMETHEUS_MULTIPROC_DIR when the operator set it,
    else a temporary folder removed at the end. Values a previous run left there are cleared first.
    The workers are started afresh (spawned) and read the variable as they import the client."""
    from middleware.metrics import MULTIPROC_DIR_ENV, clear_multiproc_dir

    given = os.environ.get(MULTIPROC_DIR_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        clear_multiproc_dir(given)
        log.info("Metrics of the %d processes: %s (%s)", workers, given, MULTIPROC_DIR_ENV)
        yield
        return
    if workers <= 1:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="persona-metrics-") as folder:
        os.environ[MULTIPROC_DIR_ENV] = folder
        log.info("Metrics of the %d processes: %s", workers, folder)
        try:
            yield
        finally:
            os.environ.pop(MULTIPROC_DIR_ENV, None)


@app.command()
def worker() -> None:
    """Run background jobs (persona refreshes, adapter training) from the Redis job queue."""
    from middleware.induction.jobs import run_worker

    configure_logging()
    run_worker(settings())


@app.command(name="train-reward-head")
def train_reward_head(
    data: Annotated[Path, typer.Option(help="JSONL(.gz) preference file of many users", exists=True)],
    format: FormatOpt = "native",
    out: Annotated[Path | None, typer.Option(help="head file (default: PERSONA_LORA_HEAD_PATH)")] = None,
    users: Annotated[int | None, typer.Option(help="train on at most N users")] = None,
) -> None:
    """Train the global reward head of the `lora` reranker on all users' pairs (needs the extra)."""
    from middleware.rerank.lora.cli_train import run_train_head

    configure_logging()
    result = run_train_head(settings(), data=data, format=format, out=out, users=users)
    typer.echo(json.dumps(result, indent=2))


@app.command(name="import")
def import_(
    file: Annotated[Path, typer.Argument(help="JSONL or JSONL.gz file of preference pairs", exists=True)],
    format: FormatOpt = "native",
    tenant: TenantOpt = "default",
) -> None:
    """Stream a preference file into users' preference logs (idempotent). Starts a local
    redis-server (like `persona serve`) if none runs."""
    from middleware.embedded_redis import redis_available
    from middleware.preferences.importer import run_import

    cfg = settings()
    with redis_available(cfg.redis_url, Path(cfg.data_dir), allowed=cfg.embedded_redis):
        summary = asyncio.run(run_import(cfg, file, format=format, tenant=tenant))
    typer.echo(json.dumps(summary, indent=2))
    if summary.get("bad_lines"):
        raise typer.Exit(code=1)


@app.command()
def induce(
    user: Annotated[str, typer.Argument(help="end-user id")],
    tenant: TenantOpt = "default",
    model: Annotated[str | None, typer.Option(help="LLM used for induction")] = None,
) -> None:
    """Induce a persona for one user now, with progress output."""
    from middleware.induction.cli_induce import run_induce

    configure_logging()
    result = asyncio.run(run_induce(settings(), tenant=tenant, user=user, model=model))
    typer.echo(json.dumps(result, indent=2, default=str))


segments_app = typer.Typer(help="segments of a tenant's users")
app.add_typer(segments_app, name="segments")


@segments_app.command(name="learn")
def segments_learn(
    tenant: TenantOpt = "default",
    k: Annotated[int, typer.Option(min=2, max=64, help="number of segments")] = 2,
    prefix: Annotated[str, typer.Option(help="segments are named <prefix>-1 … <prefix>-k")] = "learned",
    min_pairs: Annotated[int, typer.Option(min=1, help="users with fewer pairs stay unassigned")] = 1,
    seed: Annotated[int, typer.Option(help="k-means seed")] = 0,
) -> None:
    """Group the tenant's users by their preference data into K ordinary segments and assign them
    (k-means over each user's mean chosen-minus-rejected answer vector)."""
    from middleware.identity import validate_segment
    from middleware.induction.learn_segments import learn_segments

    async def learn(services: Services) -> dict[str, Any]:
        validate_segment(f"{prefix}-{k}", param="prefix")
        learned = await learn_segments(
            services.users,
            services.preferences,
            services.segments,
            tenant,
            k=k,
            prefix=prefix,
            min_pairs=min_pairs,
            seed=seed,
        )
        return learned.as_dict()

    run_with_services("segments learn", learn)


@app.command(name="eval")
def eval_(
    data: Annotated[Path, typer.Option(help="JSONL(.gz) preference file", exists=True)],
    scorer: Annotated[
        str, typer.Option(help="global | lora | lora-other | judge | judge-default | random | length")
    ] = "global",
    users: Annotated[int | None, typer.Option(help="evaluate at most N users")] = None,
    out: Annotated[Path | None, typer.Option(help="write the JSON report here")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a PNG plot here")] = None,
    format: FormatOpt = "native",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    model: Annotated[
        str | None, typer.Option(help="LLM of the judge scorers (default: judge model, else induction model)")
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="int8 encoder of the global/lora scorers: off | attention | all (default: PERSONA_LORA_QUANTIZE)"
        ),
    ] = None,
    cold_start: Annotated[
        bool,
        typer.Option(
            "--cold-start",
            help="the cold-start curve of the lora family instead (global, segment, own, own+segment "
            "adapters vs 0/2/5/10/all own pairs); --scorer is not used",
        ),
    ] = False,
    segments_k: Annotated[int, typer.Option(min=2, max=64, help="--cold-start: learned segments")] = 4,
    folds: Annotated[int, typer.Option(min=2, help="--cold-start: cross-fitting folds of users")] = 5,
    own_users: Annotated[
        int | None,
        typer.Option(min=2, help="--cold-start: train the costly own adapters for N of the users only"),
    ] = None,
    segment_pool: Annotated[
        int | None, typer.Option(min=10, help="--cold-start: pairs a segment adapter is trained on at most")
    ] = None,
) -> None:
    """Offline evaluation: time-ordered hold-out, both orders, bootstrap CI."""
    from middleware.evaluation.cli_eval import run_cold_start, run_eval

    if cold_start:
        run_cold_start(
            data=data,
            users=users,
            out=out,
            plot=plot,
            format=format,
            seed=seed,
            folds=folds,
            own_users=own_users,
            max_pool=segment_pool,
            segments_k=segments_k,
            quantize=quantize,
        )
        return
    run_eval(
        data=data,
        scorer=scorer,
        users=users,
        out=out,
        plot=plot,
        format=format,
        seed=seed,
        model=model,
        quantize=quantize,
    )


@app.command()
def report(
    evaluation_id: Annotated[str, typer.Argument(help="online evaluation run id")],
    tenant: TenantOpt = "default",
    out: Annotated[Path | None, typer.Option(help="write the JSON report here")] = None,
    plot: Annotated[Path | None, typer.Option(help="write the PNG chart here")] = None,
) -> None:
    """Report of an online own/other/baseline evaluation run."""
    from middleware.evaluation.online_cli import run_report

    result = asyncio.run(
        run_report(settings(), tenant=tenant, evaluation_id=evaluation_id, out=out, plot=plot)
    )
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command(name="train-adapters")
def train_adapters(
    users: Annotated[
        list[str] | None, typer.Argument(help="end-user ids (default: every user of the tenant)")
    ] = None,
    tenant: TenantOpt = "default",
) -> None:
    """Queue lora adapter training for users with a persona (the worker trains them; no LLM calls).
    Run it after `persona train-reward-head`: adapters of the old head are no longer used."""
    from middleware.induction.adapters import enqueue_adapter_training

    async def queue(services: Services) -> dict[str, Any]:
        return await enqueue_adapter_training(
            services.settings, services.users, services.jobs, tenant, users or None
        )

    run_with_services("train-adapters", queue)


@app.command()
def forget(
    user: Annotated[str, typer.Argument(help="end-user id")],
    tenant: TenantOpt = "default",
) -> None:
    """Delete everything stored about a user."""
    from middleware.privacy import forget_cli

    typer.echo(json.dumps(asyncio.run(forget_cli(settings(), tenant, user)), indent=2))


@app.command()
def export(
    user: Annotated[str, typer.Argument(help="end-user id")],
    tenant: TenantOpt = "default",
) -> None:
    """Print everything stored about a user as JSON."""
    from middleware.privacy import export_cli

    json.dump(asyncio.run(export_cli(settings(), tenant, user)), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def main() -> None:
    app()
