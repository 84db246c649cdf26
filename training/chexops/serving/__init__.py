"""The clinic endpoint's logic (bentos/service.py is the thin BentoML shell around it).

numpy, Pillow, pydicom, ONNX Runtime, Starlette/FastAPI, SQLAlchemy and prometheus_client only: never torch.

- `settings`: every `CHEXOPS_*` environment variable the service reads;
- `inference`: the ONNX Runtime session, findings, triage priority, heatmaps;
- `auth`: per-clinic API keys, rate limits per key and per address, failed authentications per address;
- `feedback_store`: predictions and clinicians' feedback (SQLAlchemy Core: SQLite WAL, or PostgreSQL by URL);
- `feedback_export`: the stored feedback as a CheXpert-layout dataset;
- `metrics`: the service's Prometheus series;
- `lifetime`: nothing serves after the command that started it is gone;
- `app`: the HTTP routes (/predict, /explain, /feedback, /), mounted into the BentoML service.
"""
