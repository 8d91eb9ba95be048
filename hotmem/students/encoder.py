"""The encoder student as a backend: a fine-tuned MiniLM span model in one ONNX graph, decoded in numpy.

`hotmem distill --student encoder` exports a folder (see `hotmem.pipeline.encoder`) that this module runs with
onnxruntime, HF `tokenizers` and numpy only: no torch, no transformers, cold start well under a second.

How it reads a conversation (the contract training follows, so both sides import it from here):

* each turn is written `<speaker>: <text>`, an anonymous speaker as the word `speaker`, so the first person is a
  real span at the start of the turn and `assemble_graph` folds it to the speaker;
* words are `\\w+(?:[-_]\\w+)*|\\S`; every run of up to `max_width` words within a turn is a candidate span;
* the graph scores each span against the schema's entity types, whose label vectors come from the same graph
  (its pooled sentence embedding of the type name, projected by a small MLP in numpy);
* entities are decoded greedily (best score first, no overlap); a person or animal right after "my" is named for
  the turn's speaker ("Hamid: my mum" -> "Hamid's mum", as gold names unnamed kin); every ordered pair of them (its
  two span vectors and the mean token state between them) is scored in numpy against a "no relation" key and the
  predicates' label vectors, a softmax over those the schema allows for the pair's types. Labels are embedded once
  per schema and cached by its fingerprint, so any schema runs without retraining (closed extraction: only its
  types and predicates can come out);
* each text is its own onnxruntime call with the int8 graph (see `EncoderStudent.extract_many`), so a graph never
  depends on what else was extracted with it.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hotmem.assemble import ExtractedEntity, ExtractedRelation, assemble_graph
from hotmem.errors import ModelNotAvailableError, StudentNotFoundError
from hotmem.llama.models import cache_dir
from hotmem.names import SPEAKER
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.shipped import shipped_root
from hotmem.types import Graph, Turn, render_turns, speakers_of

__all__ = ["ENCODER_KIND", "EncoderStudent", "SpanBatch", "between_means", "decode_entities", "featurize",
           "is_encoder_student", "label_keys", "load_tokenizer", "marked_text", "owned_name", "owner_of",
           "pair_logits", "predicate_label", "shipped_encoder_dir", "type_label"]

logger = logging.getLogger(__name__)

STUDENT_FILE = "student.json"
ENCODER_KIND = "encoder"
INSTALL_HINT = "pip install 'hotmem[encoder]'"
#: Words as the span model counts them (gliner's splitter): names and numbers, and each other character alone.
WORD = re.compile(r"\w+(?:[-_]\w+)*|\S")
#: MiniLM's position limit; words past it get no token and so no span.
MAX_TOKENS = 512


# --------------------------------------------------------------------------- the text contract (shared with training)


def marked_text(turns: Sequence[Turn]) -> str:
    """`<speaker>: <text>` per turn; an anonymous speaker is the word `speaker` (a span the model can tag)."""
    return "\n".join(f"{t.speaker or SPEAKER}: {t.text}" for t in turns)


#: Types whose unnamed mention after "my" is named for its owner ("Hamid: my mum" -> "Hamid's mum"), as our gold
#: and the teacher name unnamed kin and pets; "my celiac disease" stays "celiac disease".
OWNED_TYPES = frozenset({"PERSON", "ANIMAL"})


def owner_of(text: str, words: Sequence[tuple[int, int]], first: int) -> str | None:
    """The speaker whose "my" stands right before word `first` of a marked text ("Hamid: my mum" -> "Hamid";
    an anonymous speaker -> "speaker"), else None."""
    if first == 0:
        return None
    start, end = words[first - 1]
    if text[start:end].casefold() != "my":
        return None
    line = text.rfind("\n", 0, start) + 1
    colon = text.find(": ", line)
    return text[line:colon] if 0 <= colon < start else None


def owned_name(owner: str, mention: str) -> str:
    """How an unnamed mention is named for its owner: `speaker's grandpa`, `Hamid's mother-in-law`."""
    return f"{owner}'s {mention}"


def type_label(entity_type: str) -> str:
    """The text embedded for an entity type: `PERSON` -> `person` (MiniLM is uncased)."""
    return entity_type.replace("_", " ").lower()


def predicate_label(predicate: str) -> str:
    """The text embedded for a predicate: `lives_in` -> `lives in` (WordPiece would split `_` off as a token)."""
    return predicate.replace("_", " ")


@dataclass
class SpanBatch:
    """Model inputs for a batch of texts, and how spans map back to words and characters."""

    feeds: dict[str, np.ndarray]  # input_ids, attention_mask, span_idx (B,S,2 token positions), span_width (B,S)
    words: list[list[tuple[int, int]]]  # per text: character offsets of each word
    spans: list[list[tuple[int, int]]]  # per text: (first word, last word) of each candidate span, in feed order


def featurize(tokenizer: Any, texts: Sequence[str], max_width: int) -> SpanBatch:
    """Tokenise pre-split words (WordPiece per word) and enumerate the word spans of up to `max_width` words.

    A span is given to the graph as the positions of its first and last subtoken, plus its width in words."""
    words = [[m.span() for m in WORD.finditer(text)] for text in texts]
    encodings = tokenizer.encode_batch([[text[a:b] for a, b in w] for text, w in zip(texts, words)],
                                       is_pretokenized=True)
    length = max(1, max(len(e.ids) for e in encodings))
    input_ids = np.zeros((len(texts), length), np.int64)
    attention = np.zeros((len(texts), length), np.int64)
    spans, positions = [], []
    for b, encoding in enumerate(encodings):
        input_ids[b, : len(encoding.ids)] = encoding.ids
        attention[b, : len(encoding.ids)] = 1
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for position, word in enumerate(encoding.word_ids):
            if word is not None:
                first.setdefault(word, position)
                last[word] = position
        n = len(words[b])
        # a span never crosses a turn (line) boundary
        breaks = [m.start() for m in re.finditer("\n", texts[b])]
        line = [bisect.bisect(breaks, start) for start, _ in words[b]]
        pairs = [(i, j) for i in range(n) if i in first for j in range(i, min(i + max_width, n))
                 if j in last and line[j] == line[i]]
        spans.append(pairs)
        positions.append([(first[i], last[j]) for i, j in pairs])
    count = max(1, max(len(p) for p in positions))
    span_idx = np.zeros((len(texts), count, 2), np.int64)
    span_width = np.zeros((len(texts), count), np.int64)
    for b, (pairs, pos) in enumerate(zip(spans, positions)):
        if pairs:
            span_idx[b, : len(pos)] = pos
            span_width[b, : len(pairs)] = [j - i for i, j in pairs]
    feeds = {"input_ids": input_ids, "attention_mask": attention, "span_idx": span_idx, "span_width": span_width}
    return SpanBatch(feeds, words, spans)


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    # The packaged MiniLM tokenizer.json pads every input to 128 tokens: 3x the work on short utterances.
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    return tokenizer


# --------------------------------------------------------------------------- numpy heads


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form: the heads are trained with `nn.GELU(approximate="tanh")`, so numpy matches torch."""
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


def mlp(heads: dict[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    """`Linear -> GELU -> Linear` with weights `{name}.0.weight` ... as torch's `nn.Sequential` names them."""
    x = gelu(x @ heads[f"{name}.0.weight"].T + heads[f"{name}.0.bias"])
    return x @ heads[f"{name}.2.weight"].T + heads[f"{name}.2.bias"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def type_fit(schema: RelationSchema) -> np.ndarray:
    """(T,T,P) whether predicate p allows a head of type i and a tail of type j: decoding picks the best predicate
    among those the schema allows for the pair (closed assembly would drop the others anyway)."""
    types, predicates = list(schema.entity_types), list(schema.predicates)
    fit = np.ones((len(types), len(types), len(predicates)), bool)
    for p, name in enumerate(predicates):
        spec = schema.get(name)
        if spec is not None and spec.head_types:
            fit[[i for i, t in enumerate(types) if t not in spec.head_types], :, p] = False
        if spec is not None and spec.tail_types:
            fit[:, [j for j, t in enumerate(types) if t not in spec.tail_types], p] = False
    return fit


def shipped_encoder_dir() -> Path | None:
    """The encoder student shipped in `optimized/encoder` (installed as `hotmem.optimized`), if any."""
    candidate = shipped_root() / "encoder"
    return candidate if is_encoder_student(candidate) else None


def is_encoder_student(folder: str | Path) -> bool:
    """Whether a folder holds an exported encoder student (`student.json` with `"kind": "encoder"`)."""
    spec = Path(folder) / STUDENT_FILE
    try:
        return spec.is_file() and json.loads(spec.read_text()).get("kind") == ENCODER_KIND
    except ValueError:
        return False


# --------------------------------------------------------------------------- the backend


class EncoderStudent:
    """An exported encoder student folder as a backend: turns -> Graph, closed to `schema` by construction."""

    name = "encoder"

    def __init__(self, path: str | Path, *, schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True,
                 threads: int = 1, model_file: str | None = None):
        """`threads`: onnxruntime intra-op threads (1 measured fastest on a shared 2-core machine). `model_file`:
        another ONNX file of the folder (e.g. the int8 one) instead of the one `student.json` names."""
        folder = Path(path)
        if not (folder / STUDENT_FILE).is_file():
            raise StudentNotFoundError(f"no exported encoder student at {folder} ({STUDENT_FILE} expected): "
                                       "train one with `hotmem distill --student encoder`")
        spec = json.loads((folder / STUDENT_FILE).read_text())
        if spec.get("kind") != ENCODER_KIND:
            raise StudentNotFoundError(f"{folder / STUDENT_FILE} is a {spec.get('kind', 'LoRA')!r} student, "
                                       "not an encoder student")
        model = folder / (model_file or spec["model"])
        for needed in (model, folder / spec["tokenizer"], folder / spec["heads"]):
            if not needed.is_file():
                raise StudentNotFoundError(f"the encoder student at {folder} lacks {needed.name}")
        try:
            import onnxruntime as ort
            import tokenizers  # noqa: F401
        except ImportError as exc:
            raise ModelNotAvailableError(f"the encoder student needs onnxruntime and tokenizers ({exc.name or exc} is "
                                         f"missing): {INSTALL_HINT}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.tokenizer = load_tokenizer(folder / spec["tokenizer"])
        with np.load(folder / spec["heads"]) as archive:
            self.heads = {key: archive[key].astype(np.float32) for key in archive.files}
        self.folder, self.spec, self.schema, self.closed = folder, spec, schema, closed
        self.max_width = int(spec.get("max_width", 8))
        thresholds = spec.get("thresholds", {})
        self.entity_threshold = float(thresholds.get("entity", 0.5))
        self.relation_threshold = float(thresholds.get("relation", 0.5))
        self.model = f"encoder:{folder.name}"
        # the int8 export (`quantize_dynamic`) computes activation scales per call: one text per call
        self.batch_size = 1 if model.name == spec.get("files", {}).get("int8") else 8
        # the label cache key: which weights embedded the labels, and which labels
        self.session_file = model
        self._weights_id = hashlib.sha256(f"{model.name}:{model.stat().st_size}:{model.stat().st_mtime_ns}"
                                          .encode()).hexdigest()[:12]
        self.types = list(schema.entity_types)
        self.predicates = list(schema.predicates)
        self.type_keys, self.predicate_keys = self._label_keys()
        self.type_fit = type_fit(schema)
        self._usage = {"calls": 0, "prompt_tokens": 0, "output_tokens": 0}
        # numpy's BLAS threads spin after each small matmul and take the core onnxruntime runs on (measured: int8
        # p50 14-15 ms with them, 4.8 ms without): hold BLAS to `threads` while extracting
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            self._blas_limit = contextlib.nullcontext
        else:
            controller = ThreadpoolController()
            self._blas_limit = lambda: controller.limit(limits=threads, user_api="blas")

    # labels ------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The graph's pooled, L2-normalised sentence embedding of each text (how labels are embedded)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), length), np.int64)
        mask = np.zeros((len(texts), length), np.int64)
        for b, encoding in enumerate(encodings):
            ids[b, : len(encoding.ids)], mask[b, : len(encoding.ids)] = encoding.ids, 1
        key_size = self.heads["type_proj.2.weight"].shape[0]
        # the span inputs are unused here: one dummy span, one dummy type
        feeds = {"input_ids": ids, "attention_mask": mask, "span_idx": np.zeros((len(texts), 1, 2), np.int64),
                 "span_width": np.zeros((len(texts), 1), np.int64), "type_keys": np.zeros((1, key_size), np.float32)}
        return self.session.run(["pooled"], feeds)[0]

    def _label_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """Type and predicate keys for this schema: shipped in the folder (export writes its training schema's),
        else in the machine's cache, else embedded now (a fraction of a second) and cached by the schema's
        fingerprint and the weights that embedded them."""
        name = f"{self.session_file.stem}-{self.schema.fingerprint()}.npz"
        cached = cache_dir() / "encoder-labels" / f"{self._weights_id}-{name}"
        for candidate in (self.folder / "labels" / name, cached):
            if candidate.is_file():
                with np.load(candidate) as archive:
                    return archive["type_keys"], archive["predicate_keys"]
        keys = label_keys(self.heads, self.embed, self.types, self.predicates)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cached, type_keys=keys[0], predicate_keys=keys[1])
        except OSError as exc:  # a read-only cache only costs the embedding again next time
            logger.debug("cannot cache label embeddings at %s: %s", cached, exc)
        return keys

    # extraction ----------------------------------------------------------------
    def usage(self) -> dict[str, int]:
        """Calls and tokens read so far (`output_tokens` stays 0: nothing is generated)."""
        return dict(self._usage)

    def __call__(self, turns: Sequence[Turn]) -> Graph:
        return self.extract_many([turns])[0]

    def extract_many(self, conversations: Sequence[Sequence[Turn]], batch_size: int | None = None) -> list[Graph]:
        """Graphs for many chunks, in input order, each the graph the chunk gets alone.

        `batch_size`: chunks per onnxruntime call, of similar length so padding wastes little. By default 1 for the
        int8 graph and 8 for fp32: int8 quantizes activations with one scale per tensor, so chunks in one call
        would change each other's graphs (gold dev entity logits moved by up to 5.8), and one at a time it is
        faster anyway (156 vs 116 utterances/s at 32); fp32 is batch-invariant and fastest at 8 (105 vs 83 at 1)."""
        batch_size = batch_size or self.batch_size
        texts = [marked_text(turns) for turns in conversations]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        graphs: list[Graph | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            chosen = order[start: start + batch_size]
            raw = self.raw([texts[i] for i in chosen])
            for i, (entities, relations) in zip(chosen, raw):
                turns = conversations[i]
                graphs[i] = assemble_graph(entities, relations, text=render_turns(turns),
                                           speakers=speakers_of(turns), schema=self.schema, closed=self.closed)
        return graphs  # type: ignore[return-value]

    def scores(self, texts: Sequence[str]) -> tuple[SpanBatch, np.ndarray, np.ndarray, np.ndarray]:
        """The graph's entity logits (B,S,T), span vectors (B,S,D) and token states (B,L,H) for marked texts."""
        batch = featurize(self.tokenizer, texts, self.max_width)
        ent_logits, span_rep, states = self.session.run(["ent_logits", "span_rep", "states"],
                                                        {**batch.feeds, "type_keys": self.type_keys})
        self._usage["calls"] += len(texts)
        self._usage["prompt_tokens"] += int(batch.feeds["attention_mask"].sum())
        return batch, ent_logits, span_rep, states

    def raw(self, texts: Sequence[str]) -> list[tuple[list[ExtractedEntity], list[ExtractedRelation]]]:
        """Entities and relations before assembly, per marked text."""
        with self._blas_limit():
            return self._raw(texts)

    def _raw(self, texts: Sequence[str]) -> list[tuple[list[ExtractedEntity], list[ExtractedRelation]]]:
        batch, ent_logits, span_rep, states = self.scores(texts)
        out = []
        for b, text in enumerate(texts):
            spans = batch.spans[b]
            probs = sigmoid(ent_logits[b, : len(spans)])
            chosen = decode_entities(spans, probs, self.entity_threshold)
            words = batch.words[b]
            entities = []
            for (i, j), t, _ in chosen:
                name, owner = text[words[i][0]: words[j][1]], owner_of(text, words, i)
                if owner is not None and self.types[t] in OWNED_TYPES:
                    name = owned_name(owner, name)
                entities.append(ExtractedEntity(name=name, type=self.types[t]))
            relations = []
            if len(chosen) > 1:
                index = [k for _, _, k in chosen]
                kinds = [t for _, t, _ in chosen]
                allowed = self.type_fit[np.ix_(kinds, kinds)]  # (E,E,P)
                candidates = allowed.any(-1)
                np.fill_diagonal(candidates, False)  # never an entity to itself
                heads_, tails = np.nonzero(candidates)
                if len(heads_):
                    context = between_means(states[b], batch.feeds["span_idx"][b, index])
                    logits = pair_logits(self.heads, span_rep[b, index], self.predicate_keys, context,
                                         pairs=(heads_, tails))
                    logits[:, 1:] = np.where(allowed[heads_, tails], logits[:, 1:], -np.inf)
                    probs = softmax(logits)[:, 1:]
                    for n, p in zip(*np.nonzero(probs > self.relation_threshold)):
                        relations.append(ExtractedRelation(subject=entities[heads_[n]].name,
                                                           predicate=self.predicates[p],
                                                           object=entities[tails[n]].name))
            out.append((entities, relations))
        return out


def label_keys(heads: dict[str, np.ndarray], embed, types: Sequence[str],
               predicates: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(T,D) type keys and (P,D) predicate keys: label texts embedded by `embed`, projected by the heads."""
    type_keys = mlp(heads, "type_proj", embed([type_label(t) for t in types]))
    predicate_keys = mlp(heads, "pred_proj", embed([predicate_label(p) for p in predicates]))
    return type_keys.astype(np.float32), predicate_keys.astype(np.float32)


def decode_entities(spans: Sequence[tuple[int, int]], probs: np.ndarray,
                    threshold: float) -> list[tuple[tuple[int, int], int, int]]:
    """Greedy flat decoding: spans above `threshold`, best first, none overlapping a kept one.
    Returns ((first word, last word), type index, span index) in text order."""
    if not len(spans):
        return []
    best, label = probs.max(-1), probs.argmax(-1)
    used: set[int] = set()
    kept = []
    for k in sorted(np.nonzero(best > threshold)[0], key=lambda k: -best[k]):
        i, j = spans[k]
        if used.isdisjoint(range(i, j + 1)):
            used.update(range(i, j + 1))
            kept.append(((i, j), int(label[k]), int(k)))
    return sorted(kept)


def between_means(states: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(E,E,H) mean token state strictly between spans h and t, in either order (zeros when they touch or
    overlap): the words that usually carry the relation ("... moved to ...", "... works at ...").
    `states` (L,H) token states of one text, `positions` (E,2) first and last token of each span."""
    sums = np.concatenate([np.zeros((1, states.shape[-1]), states.dtype), states.cumsum(0)])
    start, end = positions[:, 0], positions[:, 1]
    before = end[:, None] < start[None, :]  # h ends before t starts
    lo = np.where(before, end[:, None], end[None, :]) + 1  # first token between
    hi = np.where(before, start[None, :], start[:, None])  # one past the last token between
    count = hi - lo
    valid = count > 0
    lo, hi = np.where(valid, lo, 0), np.where(valid, hi, 0)
    return (sums[hi] - sums[lo]) / np.maximum(count, 1)[..., None] * valid[..., None]


def pair_logits(heads: dict[str, np.ndarray], reps: np.ndarray, predicate_keys: np.ndarray, context: np.ndarray,
                pairs: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(E,E,1+P) logits of `head -predicate-> tail` for E entity span vectors, index 0 being "no relation": the
    pair MLP on [h; t; h*t; words between], scored against the "none" key and each predicate key. Numpy mirror of
    `hotmem.pipeline.encoder.EncoderModel.pair_logits`; `context` is `between_means(...)`. With `pairs` (head and
    tail index arrays), (N,1+P) logits of those N pairs only: decoding skips the pairs no predicate allows.

    The first layer is split by its input blocks, so the h and t parts are computed once per entity and only the
    h*t and context parts per pair."""
    size = reps.shape[-1]
    weight, bias = heads["pair_mlp.0.weight"], heads["pair_mlp.0.bias"]
    as_head = reps @ weight[:, :size].T
    as_tail = reps @ weight[:, size: 2 * size].T
    if pairs is None:
        products = (reps[:, None, :] * reps[None, :, :]) @ weight[:, 2 * size: 3 * size].T
        between = context @ weight[:, 3 * size:].T
        hidden = gelu(as_head[:, None, :] + as_tail[None, :, :] + products + between + bias)
    else:
        heads_, tails = pairs
        products = (reps[heads_] * reps[tails]) @ weight[:, 2 * size: 3 * size].T
        between = context[heads_, tails] @ weight[:, 3 * size:].T
        hidden = gelu(as_head[heads_] + as_tail[tails] + products + between + bias)
    pair = hidden @ heads["pair_mlp.2.weight"].T + heads["pair_mlp.2.bias"]
    none = pair @ heads["none_key"] + heads["none_bias"]
    return np.concatenate([none[..., None], pair @ predicate_keys.T], -1)


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.exp(x - x.max(-1, keepdims=True))
    return x / x.sum(-1, keepdims=True)
