"""A thin Python client for the citeloop API (httpx). Errors raise `CiteloopError` with the API's code and message.

    from api.client import Client
    with Client("http://127.0.0.1:8000", key) as c:
        answer = c.ask("python-docs", "How do I sort a list in place?")
        c.vote(answer["answer_id"], "up")
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx


class CiteloopError(RuntimeError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    def __init__(self, base_url: str, key: str | None = None, timeout: float = 300.0):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise CiteloopError(response.status_code, error["code"], error["message"])
            except (ValueError, KeyError, TypeError):
                raise CiteloopError(response.status_code, "http_error", response.text) from None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    # collections and documents
    def create_collection(self, name: str) -> dict:
        return self._call("POST", "/v1/collections", json={"name": name})

    def collections(self) -> list[dict]:
        return self._call("GET", "/v1/collections")

    def add_documents(self, collection: str, documents: list[dict]) -> dict:
        return self._call("POST", f"/v1/collections/{collection}/documents", json={"documents": documents})

    def upload(self, collection: str, paths: list[Path]) -> dict:
        files = [("files", (Path(p).name, Path(p).read_bytes())) for p in paths]
        return self._call("POST", f"/v1/collections/{collection}/documents", files=files)

    def delete_document(self, collection: str, doc_id: str) -> dict:
        return self._call("DELETE", f"/v1/collections/{collection}/documents/{doc_id}")

    # answers and search
    def ask(self, collection: str, question: str, top_k: int | None = None, filters: dict | None = None) -> dict:
        body = {"collection": collection, "question": question} | ({"top_k": top_k} if top_k else {}) | ({"filters": filters} if filters else {})
        return self._call("POST", "/v1/ask", json=body)

    def ask_stream(self, collection: str, question: str, top_k: int | None = None) -> Iterator[tuple[str, Any]]:
        """(event, data) pairs: contexts, token..., citations, done (or error)."""
        body = {"collection": collection, "question": question, "stream": True} | ({"top_k": top_k} if top_k else {})
        with self.http.stream("POST", "/v1/ask", json=body) as response:
            if response.status_code >= 400:
                response.read()
                error = response.json()["error"]
                raise CiteloopError(response.status_code, error["code"], error["message"])
            event = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    yield event, json.loads(line[6:])
                    event = None

    def search(self, collection: str, query: str, k: int = 10, filters: dict | None = None) -> dict:
        body = {"collection": collection, "query": query, "k": k} | ({"filters": filters} if filters else {})
        return self._call("POST", "/v1/search", json=body)

    # feedback
    def vote(self, answer_id: str, rating: str, comment: str | None = None) -> dict:
        return self._call("POST", f"/v1/answers/{answer_id}/feedback", json={"rating": rating, "comment": comment})

    def flag(self, answer_id: str, n: int, reason: str) -> dict:
        return self._call("POST", f"/v1/answers/{answer_id}/citations/{n}/flag", json={"reason": reason})

    def judge(self, chunk_id: str, relevant: bool, answer_id: str | None = None, search_id: str | None = None) -> dict:
        body = {"chunk_id": chunk_id, "relevant": relevant, "answer_id": answer_id, "search_id": search_id}
        return self._call("POST", "/v1/judgements", json={k: v for k, v in body.items() if v is not None})

    def correct(self, answer_id: str, answer: str) -> dict:
        return self._call("POST", f"/v1/answers/{answer_id}/correction", json={"answer": answer})

    def review_queue(self, collection: str) -> list[dict]:
        return self._call("GET", "/v1/review-queue", params={"collection": collection})

    def export(self, collection: str, since: str | None = None, format: str = "jsonl") -> bytes:
        params = {"collection": collection, "format": format} | ({"since": since} if since else {})
        return self._call("GET", "/v1/feedback/export", params=params)

    def erase(self, key_name: str) -> dict:
        return self._call("DELETE", "/v1/feedback", params={"key_name": key_name})

    # training data, jobs and the registry
    def set_key_training_opt_out(self, key_name: str, opt_out: bool) -> dict:
        return self._call("PATCH", f"/v1/keys/{key_name}", json={"training_opt_out": opt_out})

    def set_collection_training_opt_out(self, collection: str, opt_out: bool) -> dict:
        return self._call("PATCH", f"/v1/collections/{collection}", json={"training_opt_out": opt_out})

    def add_evalset(self, collection: str, name: str, rows: list[dict]) -> dict:
        return self._call("POST", f"/v1/collections/{collection}/evalsets", json={"name": name, "rows": rows})

    def evalsets(self, collection: str) -> list[dict]:
        return self._call("GET", f"/v1/collections/{collection}/evalsets")

    def submit_job(self, collection: str, kind: str = "reranker", options: dict | None = None) -> dict:
        return self._call("POST", "/v1/training/jobs", json={"kind": kind, "collection": collection, "options": options or {}})

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/training/jobs/{job_id}")

    def jobs(self, collection: str | None = None) -> list[dict]:
        return self._call("GET", "/v1/training/jobs", params={"collection": collection} if collection else {})

    def cancel_job(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/training/jobs/{job_id}/cancel")

    def models(self, collection: str | None = None) -> dict:
        return self._call("GET", "/v1/models", params={"collection": collection} if collection else {})

    def promote(self, version_id: str, force: bool = False) -> dict:
        return self._call("POST", f"/v1/models/{version_id}/promote", json={"force": force})

    def rollback(self, version_id: str) -> dict | None:
        return self._call("POST", f"/v1/models/{version_id}/rollback")

    # evaluation runs
    def evals(self, collection: str | None = None, limit: int = 50) -> list[dict]:
        return self._call("GET", "/v1/evals", params={"limit": limit} | ({"collection": collection} if collection else {}))

    def eval_run(self, run_id: str) -> dict:
        return self._call("GET", f"/v1/evals/{run_id}")

    def label_answers(self, run_id: str, labels: list[dict]) -> dict:
        """`labels`: [{"id": question id, "metric": "faithfulness", "label": 0 | 1}, ...]."""
        return self._call("POST", f"/v1/evals/{run_id}/labels", json={"labels": labels})

    def calibration(self, run_id: str) -> dict:
        return self._call("GET", f"/v1/evals/{run_id}/calibration")
