"""transmamba.serving: the OpenAI-compatible HTTP server behind `transmamba serve`.

protocol.py parses and checks requests and shapes responses, batcher.py runs the continuous-batching decode
thread, memory.py fits TransPoint schedules to a decode-memory budget, app.py is the FastAPI app (FastAPI and
uvicorn are imported only when an app is made, so `import transmamba.serving` needs neither).
"""

from transmamba.serving.app import Engine, create_app, run_server
from transmamba.serving.batcher import Batcher
from transmamba.serving.memory import fit_transpoints, peak_state_bytes
from transmamba.serving.protocol import Limits, RequestError, parse_request
from transmamba.serving.tokenizer import ByteTokenizer, load_tokenizer

__all__ = ["Batcher", "ByteTokenizer", "Engine", "Limits", "RequestError", "create_app", "fit_transpoints",
           "load_tokenizer", "parse_request", "peak_state_bytes", "run_server"]
