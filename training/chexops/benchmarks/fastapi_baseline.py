"""A minimal FastAPI + uvicorn server around the same ONNX Runtime session and preprocessing as the
clinic endpoint: the seed's original plan, kept as a benchmark baseline only (no auth, no store,
no metrics, no limits: not a product path).

    python -m chexops.benchmarks.fastapi_baseline --onnx model.onnx --port 8100 [--threads 2]

POST /predict (multipart field `image`) → {"findings": [...], "priority": ...}, computed with
`chexops.imaging.decode`, `OnnxModel.preprocess`, `OnnxModel.probabilities` and `findings`, as the
service does; GET /readyz → 200. `chexops.benchmarks.serve_bench --start` runs it beside /predict.
"""

import argparse  # no `from __future__ import annotations`: FastAPI reads the route annotations at run time
import threading


def create_app(onnx_path: str, threads: int):
    from fastapi import FastAPI, File, HTTPException, UploadFile

    from chexops.core.triage import priority
    from chexops.imaging.decode import ImageInputError, decode
    from chexops.serving.inference import OnnxModel

    model = OnnxModel.load(onnx_path, threads=threads)
    session_lock = threading.Lock()  # one session run at a time, as the service's batching-off path
    app = FastAPI(title="chexops FastAPI baseline")

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ready": True}

    @app.post("/predict")
    def predict(image: UploadFile = File(...)) -> dict:  # a sync route: FastAPI runs it in its thread pool  # noqa: B008 - FastAPI's own idiom
        try:
            x = model.preprocess(decode(image.file.read()).grey)
        except ImageInputError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        with session_lock:
            probs = model.probabilities(x[None])[0]
        findings = model.findings(probs)
        return {"findings": findings, "priority": priority(findings)}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(args.onnx, args.threads), host=args.host, port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
