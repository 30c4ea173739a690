"""``lapsv serve``: speaker verification as an HTTP service (FastAPI + uvicorn, ``lapsv[serve]``).

* :mod:`~lapsv.serve.keys`: API keys with two roles, stored as salted scrypt hashes;
* :mod:`~lapsv.serve.limits`: request body, audio duration, per-key concurrency and rate;
* :mod:`~lapsv.serve.batching`: dynamic batching of concurrent embeddings on one model;
* :mod:`~lapsv.serve.service`: the verbs (embed, verify, enrol, identify, ...) on uploads;
* :mod:`~lapsv.serve.guard`: the ASGI middleware that checks keys and limits first;
* :mod:`~lapsv.serve.metrics`: Prometheus counters and histograms;
* :mod:`~lapsv.serve.app`: the FastAPI application and the browser page (``static/``).

Nothing here imports FastAPI or uvicorn at module level, so ``lapsv --help`` and every
other verb work without the extra.
"""
