"""The FastAPI application of ``lapsv serve``: routes, JSON errors, the browser page.

FastAPI is imported inside the functions below, so that importing this module (as the
CLI does at start-up) never needs the ``lapsv[serve]`` extra. For the same reason this
module does not use ``from __future__ import annotations``: FastAPI reads the route
handlers' annotations, and they name classes imported inside those functions.

Routes (OpenAPI schema at ``/docs``): ``POST /v1/embed``, ``POST /v1/verify``,
``POST /v1/identify``, ``POST /v1/diarize``, ``POST /v1/transcribe``, ``GET /v1/speakers``,
``POST /v1/speakers/{name}`` and ``DELETE /v1/speakers/{name}`` (admin), ``GET /healthz``,
``GET /metrics``, ``GET /``.
Every error is ``{"error": "..."}`` with a 4xx status that says which problem.
"""

import contextlib
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

from lapsv import __version__
from lapsv.serve.guard import LOG, Guard
from lapsv.serve.keys import KeyStore
from lapsv.serve.service import Service, ServiceError, Upload

if TYPE_CHECKING:
    from fastapi import FastAPI

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "media-src 'self' blob:; connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
DESCRIPTION = (
    "Speaker verification with lapsv: embed, verify, identify, diarize, transcribe, enrol. "
    "Send the API key as `Authorization: Bearer KEY`; the `verify` role may embed, verify, "
    "identify, diarize, transcribe and list, the `admin` role may also enrol and delete."
)
AUDIO_HELP = "a recording in any format lapsv reads (wav, flac, ogg, mp3, ...)"
THRESHOLD_HELP = (
    "decision threshold (default: the server's --threshold, else LLR 0 for a calibrated "
    "model, else no decision)"
)
NAME_THRESHOLD_HELP = (
    "a speaker takes an enrolled name when identify's score of it passes this (default: the "
    "server's --threshold, else LLR 0 for a calibrated model, else no names)"
)


def create_app(
    service: Service, *, keys: KeyStore, cors_origins: tuple[str, ...] = ()
) -> "FastAPI":
    """The ASGI application serving ``service``, guarded by ``keys`` and its limits.

    Args:
        service: the verbs, model and database (:class:`~lapsv.serve.service.Service`).
        keys: the API keys (:class:`~lapsv.serve.keys.KeyStore`).
        cors_origins: browser origins allowed to call the API from other sites (none by
            default: no CORS headers at all).
    """
    from fastapi import FastAPI

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(title="lapsv", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    _add_error_handlers(app)
    _add_audio_routes(app, service)
    _add_conversation_routes(app, service)
    _add_speaker_routes(app, service)
    _add_operation_routes(app, service)
    app.add_middleware(Guard, keys=keys, limits=service.limits, metrics=service.metrics)
    if cors_origins:  # outside the guard: preflight requests carry no key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    return app


async def _read(field: str, upload: Any) -> Upload:
    return Upload(field, upload.filename or "", await upload.read())


def _add_error_handlers(app: "FastAPI") -> None:
    """Every error is a JSON ``{"error": ...}``; never a traceback."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(ServiceError)
    async def service_error(request: Any, error: ServiceError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Any, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in problem['loc'][1:]) or 'request'}: {problem['msg']}"
            for problem in error.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, error: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Any, error: Exception) -> JSONResponse:
        LOG.error("internal error on %s %s", request.method, request.url.path, exc_info=error)
        return JSONResponse(
            {"error": "internal error of lapsv; the server log has the details"}, status_code=500
        )


def _add_audio_routes(app: "FastAPI", service: Service) -> None:
    from fastapi import File, Form, UploadFile

    @app.post("/v1/embed", tags=["audio"], summary="The raw speaker embedding of a recording")
    async def embed(audio: Annotated[UploadFile, File(description=AUDIO_HELP)]) -> dict[str, Any]:
        return await service.embed(await _read("audio", audio))

    @app.post(
        "/v1/verify",
        tags=["audio"],
        summary="Same speaker? Recording a against recording b, or an enrolled name",
    )
    async def verify(
        a: Annotated[UploadFile, File(description=AUDIO_HELP)],
        b: Annotated[UploadFile | None, File(description="the second recording")] = None,
        name: Annotated[str | None, Form(description="or: an enrolled speaker")] = None,
        threshold: Annotated[float | None, Form(description=THRESHOLD_HELP)] = None,
    ) -> dict[str, Any]:
        first = await _read("a", a)
        second = None if b is None else await _read("b", b)
        return await service.verify(first, second, name=name, threshold=threshold)

    @app.post("/v1/identify", tags=["audio"], summary="Who is speaking? Top-k enrolled speakers")
    async def identify(
        audio: Annotated[list[UploadFile], File(description="one or more recordings")],
        top_k: Annotated[int, Form(description="speakers per recording")] = 3,
        threshold: Annotated[float | None, Form(description=THRESHOLD_HELP)] = None,
    ) -> dict[str, Any]:
        uploads = [await _read(f"audio[{i}]", upload) for i, upload in enumerate(audio)]
        return await service.identify(uploads, top_k=top_k, threshold=threshold)


def _add_conversation_routes(app: "FastAPI", service: Service) -> None:
    from fastapi import File, Form, UploadFile

    @app.post(
        "/v1/diarize",
        tags=["audio"],
        summary="Who spoke when? Speaker segments of a conversation, named when enrolled",
    )
    async def diarize(
        audio: Annotated[UploadFile, File(description=AUDIO_HELP)],
        num_speakers: Annotated[int | None, Form(description="exactly this many speakers")] = None,
        min_speakers: Annotated[int, Form(description="at least this many speakers")] = 1,
        max_speakers: Annotated[int, Form(description="at most this many speakers")] = 10,
        name_threshold: Annotated[float | None, Form(description=NAME_THRESHOLD_HELP)] = None,
        vad_threshold: Annotated[
            float | None, Form(description="Silero VAD speech probability threshold (0.5)")
        ] = None,
    ) -> dict[str, Any]:
        return await service.diarize(
            await _read("audio", audio),
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
            name_threshold=name_threshold,
            vad_threshold=vad_threshold,
        )

    @app.post(
        "/v1/transcribe",
        tags=["audio"],
        summary="Who said what? A transcript with speakers (a Whisper-frontend model)",
    )
    async def transcribe(
        audio: Annotated[UploadFile, File(description=AUDIO_HELP)],
        language: Annotated[str, Form(description="language code (en, fr, ...) or auto")] = "auto",
        word_timestamps: Annotated[bool, Form(description="time and attribute each word")] = True,
        formats: Annotated[
            str, Form(description="also render these: comma-separated srt, vtt, txt")
        ] = "",
        num_speakers: Annotated[int | None, Form(description="exactly this many speakers")] = None,
        min_speakers: Annotated[int, Form(description="at least this many speakers")] = 1,
        max_speakers: Annotated[int, Form(description="at most this many speakers")] = 10,
        name_threshold: Annotated[float | None, Form(description=NAME_THRESHOLD_HELP)] = None,
        vad_threshold: Annotated[
            float | None, Form(description="Silero VAD speech probability threshold (0.5)")
        ] = None,
    ) -> dict[str, Any]:
        return await service.transcribe(
            await _read("audio", audio),
            language=language,
            word_timestamps=word_timestamps,
            formats=formats,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
            name_threshold=name_threshold,
            vad_threshold=vad_threshold,
        )


def _add_speaker_routes(app: "FastAPI", service: Service) -> None:
    from fastapi import File, Form, Response, UploadFile

    @app.get("/v1/speakers", tags=["speakers"], summary="The enrolled speakers")
    async def speakers() -> dict[str, Any]:
        return await service.speakers()

    @app.post(
        "/v1/speakers/{name}",
        tags=["speakers"],
        summary="Enrol recordings of a speaker (admin); 201 for a new speaker, 200 for an update",
    )
    async def enroll(
        name: str,
        response: Response,
        audio: Annotated[list[UploadFile], File(description="one or more recordings")],
        replace: Annotated[bool, Form(description="drop the speaker's earlier recordings")] = False,
    ) -> dict[str, Any]:
        uploads = [await _read(f"audio[{i}]", upload) for i, upload in enumerate(audio)]
        result = await service.enroll(name, uploads, replace=replace)
        response.status_code = 201 if result["new_speaker"] else 200
        return result

    @app.delete("/v1/speakers/{name}", tags=["speakers"], summary="Delete a speaker (admin)")
    async def delete(name: str) -> dict[str, Any]:
        return await service.delete(name)


def _add_operation_routes(app: "FastAPI", service: Service) -> None:
    from fastapi.responses import HTMLResponse, PlainTextResponse, Response

    static = resources.files("lapsv.serve") / "static"
    page, script = (static / "index.html").read_text(), (static / "app.js").read_text()
    headers = {"content-security-policy": PAGE_POLICY, "cache-control": "no-cache"}

    @app.get("/healthz", tags=["operations"], summary="Liveness: the model and version")
    async def healthz() -> dict[str, Any]:
        return service.health()

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics (needs a key)",
        response_class=PlainTextResponse,
    )
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    @app.get("/app.js", include_in_schema=False)
    async def app_script() -> Response:
        return Response(script, media_type="text/javascript", headers=headers)
