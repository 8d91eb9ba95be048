"""The `hotmem` command: thin over the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hotmem.errors import HotmemError, InvalidInputError
from hotmem.shipped import SHIPPED_STUDENTS
_CONFIGURED = "the configured LM (HOTMEM_LM), else hotmem's default"


def _add_lm(parser: argparse.ArgumentParser, fallback: str = _CONFIGURED) -> None:
    parser.add_argument(
        "--lm",
        default=None,
        help="'embedded' (the 0.5B), 'embedded/<name>', a .gguf path, or a LiteLLM model string such as "
        f"ollama_chat/qwen2.5:7b or openai/gpt-4o-mini (default: {fallback})",
    )
    parser.add_argument("--api-base", default=None, help="OpenAI-compatible server URL for --lm")
    parser.add_argument("--enforces-schema", action="store_true",
                        help="the --api-base server enforces JSON schemas (vLLM, llama.cpp, Ollama): send them")


def _lm(args: argparse.Namespace, **kwargs):
    """The LM the command line names, or None (then `configure` / HOTMEM_LM / the defaults decide)."""
    if not (args.lm or args.api_base):
        return None
    from hotmem.lm import make_lm

    return make_lm(args.lm, api_base=args.api_base, enforces_schema=args.enforces_schema, **kwargs)


def _is_student(spec: str) -> bool:
    from hotmem.students.lora import STUDENT_FILE

    return spec in {"auto", *SHIPPED_STUDENTS} or (Path(spec) / STUDENT_FILE).is_file()


def _extractor(args: argparse.Namespace, spec: str, schema, lm, max_chars: int | None = None):
    """A `GraphExtractor` for `--program SPEC`: 'auto', 'student', 'encoder' or a student folder pick that backend;
    anything else is a teacher program ('default', 'teacher' or a folder saved by `hotmem optimize`)."""
    from hotmem.extractor import DEFAULT_MAX_CHARS, GraphExtractor

    closed, max_chars = not getattr(args, "open", False), max_chars or DEFAULT_MAX_CHARS
    if _is_student(spec):
        return GraphExtractor(lm, schema=schema, closed=closed, backend=spec, max_chars=max_chars)
    if getattr(args, "min_support", None) is not None:
        # the samples' facts are checked once, together: not each label's again
        from hotmem.backends import teacher

        return GraphExtractor(schema=schema, closed=closed, max_chars=max_chars,
                              backend=teacher(lm, schema=schema, closed=closed, program=spec, check=False))
    return GraphExtractor(lm, schema=schema, closed=closed, backend="teacher", program=spec, max_chars=max_chars)


def _check_samples(args: argparse.Namespace) -> None:
    # a rescore votes the samples an earlier run stored again, with any --agree up to their number
    labels = args.samples + args.demo_pages + len(args.with_program)
    most = float("inf") if getattr(args, "rescore", False) else labels
    if args.samples < 1 or args.demo_pages < 0 or not 1 <= (args.agree or 1) <= most:
        raise InvalidInputError(f"--samples must be at least 1, --demo-pages at least 0 and --agree between 1 and "
                                f"the number of labels (got {args.samples}, {args.demo_pages}, "
                                f"{len(args.with_program)} --with-program, {args.agree})")
    if (args.samples > 1 or args.demo_pages) and _is_student(args.program):  # a student answers once, greedily
        raise InvalidInputError("--samples and --demo-pages vary a teacher: a student --program answers once")
    several = labels > 1 or getattr(args, "rescore", False)
    if args.min_support is not None and (args.agree is not None or not several):
        raise InvalidInputError("--min-support votes over several labels (--samples N, --demo-pages P) instead of "
                                "--agree")
    if args.min_support is not None and _is_student(args.program):
        raise InvalidInputError("--min-support checks facts with the --program teacher's verify step: a student "
                                "--program has none; use --agree")


def _samplers(args: argparse.Namespace, schema, lm, extractor) -> list:
    """Self-consistency: beside `extractor`, `--samples N` - 1 extractors on the teacher's LM sampling at
    `--temperature`, then `--demo-pages P` greedy ones, each shown the next page of the teacher's retrieved demos,
    then one for each `--with-program` (another labeller: a student, or a teacher program on the same LM)."""
    from hotmem.backends import TeacherBackend
    from hotmem.extractor import GraphExtractor

    others = [_extractor(args, spec, schema, lm, max_chars=extractor.max_chars) for spec in args.with_program]
    if args.samples == 1 and not args.demo_pages:
        return others
    if not isinstance(extractor.backend, TeacherBackend):
        raise InvalidInputError("--samples and --demo-pages vary a teacher program's labels")
    # DSPy's way to sample: a rollout id per sampler keeps their cached answers apart
    backends = [extractor.backend.with_lm(lm.copy(rollout_id=i, temperature=args.temperature))
                for i in range(1, args.samples)]
    backends += [extractor.backend.with_demo_page(page) for page in range(1, args.demo_pages + 1)]
    return [GraphExtractor(schema=schema, closed=extractor.closed, max_chars=extractor.max_chars, backend=backend)
            for backend in backends] + others


def _add_sampling(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--samples", type=int, default=1,
                        help=f"self-consistency: {what} per input, the main one and N-1 sampled at --temperature")
    parser.add_argument("--demo-pages", type=int, default=0,
                        help=f"P more greedy {what}, each shown the next page of the teacher's retrieved demos (the k "
                             "after the nearest k, and so on): labels that differ without sampling")
    parser.add_argument("--with-program", action="append", default=[], metavar="PROGRAM",
                        help=f"another labeller whose {what} join the vote (repeatable): 'student', a folder "
                             "`hotmem distill` exported, or a teacher program on the same LM; --agree 2 with one "
                             "keeps the facts both state")
    parser.add_argument("--agree", type=int, default=None,
                        help=f"keep the facts at least this many of the {what} state (default: a majority)")
    parser.add_argument("--temperature", type=float, default=0.7, help=f"the sampled {what}' temperature")
    parser.add_argument("--min-support", type=float, default=None,
                        help=f"instead of --agree: check the facts of the {what} once with the program's verify step "
                             f"and keep those whose mean of (share of {what} stating them, probability stated) "
                             "reaches this")


def _extract(args: argparse.Namespace) -> int:
    from hotmem.extractor import GraphExtractor

    text = " ".join(args.text) if args.text != ["-"] else sys.stdin.read()
    graph = GraphExtractor(_lm(args), closed=not args.open)(text, speaker=args.speaker)
    print(graph.to_json(indent=2) if args.json else str(graph))
    return 0


_PROGRAM_HELP = (
    "'default' (the shipped optimized teacher when it was made for this schema and LM, else the unoptimized one), "
    "'teacher' (unoptimized), or a folder saved by `hotmem optimize`"
)


def _evaluate(args: argparse.Namespace) -> int:
    from hotmem.data import load_dataset
    from hotmem.pipeline.evaluate import evaluate_program

    _check_samples(args)
    records, schema = load_dataset(args.dataset, path=args.path, split=args.split, limit=args.limit)
    lm = _lm(args, cache=args.cache)
    extractor = _extractor(args, args.program, schema, lm, max_chars=10**9)
    samplers = _samplers(args, schema, lm or getattr(extractor.backend, "lm", None), extractor)
    name = f"{args.program} on {args.dataset}" + (f"/{args.split}" if args.split else "") + f" ({len(records)})"
    out = Path(args.out) if args.out else None
    meta = {"command": " ".join(sys.argv), "backend": extractor.backend.name, "lm": extractor.backend.model,
            "schema": schema.name}
    report = evaluate_program(extractor, records, schema=schema, name=name, out_dir=out, meta=meta,
                              rescore=args.rescore, samplers=samplers, agree=args.agree,
                              min_support=args.min_support)
    print(report.markdown())
    if args.json:
        print(json.dumps(report.summary(), indent=1))
    return 0


def _records(name: str, path: str | None, split: str | None, skip: int, limit: int | None):
    from hotmem.data import load_dataset

    return load_dataset(name, path=path, split=split, limit=limit, skip=skip)


def _extra_set(spec: str) -> tuple[str, int, int | None]:
    """`personaext-conversation:1000:100` -> records 1000 to 1100 of that data set; `name` alone: all of it."""
    name, *numbers = spec.split(":")
    try:
        skip, limit = (int(numbers[0]), int(numbers[1])) if numbers else (0, None)
    except (ValueError, IndexError) as exc:
        raise InvalidInputError(f"--val-extra is NAME or NAME:SKIP:LIMIT, not {spec!r}") from exc
    return name, skip, limit


def _retrieve(value: str) -> int | dict[str, int]:
    """`--retrieve 4` or `--retrieve gold=3,personaext-conversation=1`."""

    try:
        if "=" not in value:
            return int(value)
        return {name.strip(): int(count) for name, count in (part.split("=") for part in value.split(","))}
    except ValueError as exc:
        raise InvalidInputError(f"--retrieve is a number or source=number pairs, not {value!r}") from exc


def _optimize(args: argparse.Namespace) -> int:
    from hotmem.errors import SchemaMismatchError
    from hotmem.pipeline.optimize import OptimizeConfig, optimize

    trainset, schema = _records(args.train, args.train_path, args.train_split, args.train_skip, args.train_limit)
    valset, val_schema = _records(args.val, args.val_path, args.val_split, args.val_skip, args.val_limit)
    if val_schema.fingerprint() != schema.fingerprint():
        raise SchemaMismatchError("train and validation sets use different relation schemas")
    for spec in args.val_extra or ():
        name, skip, limit = _extra_set(spec)
        extra, extra_schema = _records(name, None, None, skip, limit)
        if extra_schema.fingerprint() != schema.fingerprint():
            raise SchemaMismatchError(f"--val-extra {spec}: {name} is not in the training set's schema "
                                      f"({schema.name!r}); a corpus mapped onto it is (e.g. personaext-conversation)")
        valset += extra
    config = OptimizeConfig(
        task_lm=args.lm, reflection_lm=args.reflection_lm, budget=args.budget, seed=args.seed,
        threads=args.threads, log_dir=args.log_dir, out_dir=args.out, closed=not args.open, proposer=args.proposer,
        demos=args.demos, retrieve=_retrieve(args.retrieve), pool=tuple(args.pool.split(",")), reads=args.reads,
        verify=args.verify or args.verify_threshold is not None,
        verify_threshold=args.verify_threshold,
        notes={"command": " ".join(sys.argv)},
    )
    result = optimize(config, trainset, valset, schema)
    m = result.manifest
    if m.get("gepa", True) is None:
        print(f"saved the program without GEPA (--budget 0) to {result.out_dir}")
        return 0
    seed = f"the teacher with {args.demos} gold demos" if args.demos else "the unoptimized teacher"
    print(f"best validation score {m['best_val_score']:.3f} (GEPA's seed, {seed}: {m['seed_val_score']:.3f}) "
          f"after {m['total_metric_calls']} metric calls; saved to {result.out_dir}")
    return 0


def _corpus(source: str, path: str | None, seed: int | None = None):
    """A corpus by file or by name: the utterances of ConvAI2 or DialogRE from ../shared/data (or --path), or an
    annotated mixture source in the conversation schema (its annotations are kept to score the labels)."""
    from hotmem.data import dataset_file
    from hotmem.pipeline.label import Utterance, annotated_utterances, read_corpus
    from hotmem.pipeline.mixture import SOURCES

    if source == "convai2":
        from hotmem.data import iter_convai2_utterances

        return (Utterance(id=f"convai2-{i:07d}", turns=[{"text": text}], source="convai2")
                for i, text in enumerate(iter_convai2_utterances(dataset_file("convai2", path))))
    if source == "dialogre":
        from hotmem.data import load_dialogre

        # train by default: DialogRE dev is evaluation data
        return (Utterance(id=f"{record.id}-t{i:03d}", turns=[turn], source="dialogre")
                for record in load_dialogre(dataset_file("dialogre", path, split="train" if path is None else None))
                for i, turn in enumerate(record.turns))
    if source in SOURCES and not Path(source).exists():
        return annotated_utterances(source, path, seed=seed)
    return read_corpus(source)


def _label(args: argparse.Namespace) -> int:
    from hotmem.lm import LABELLING_LM, configured_lm, make_lm
    from hotmem.pipeline.label import LabelConfig, label_corpus
    from hotmem.schema import CONVERSATION_SCHEMA

    _check_samples(args)
    config = LabelConfig(out_dir=args.out, min_confidence=args.min_confidence, threads=args.threads, limit=args.limit,
                         clean_items=not args.drop_whole, agree=args.agree,
                         min_support=args.min_support)
    # a student runs its own model: no teacher LM to load unless a labeller is a teacher
    students_only = all(_is_student(spec) for spec in (args.program, *args.with_program))
    lm = _lm(args) if students_only else _lm(args) or configured_lm() or make_lm(LABELLING_LM)
    extractor = _extractor(args, args.program, CONVERSATION_SCHEMA, lm)
    samplers = _samplers(args, CONVERSATION_SCHEMA, lm, extractor)
    utterances = _corpus(args.source, args.path, args.seed)
    if args.unseen_by:
        from hotmem.pipeline.mixture import base_id, taught_record_ids

        taught = taught_record_ids(args.unseen_by)
        utterances = (u for u in utterances if base_id(u.id) not in taught)
    report = label_corpus(extractor, utterances, config=config, samplers=samplers)
    print(json.dumps(report.to_dict(), indent=1))
    return 0


def _mixture(args: argparse.Namespace):
    from hotmem.pipeline.mixture import Mixture, MixtureSource, earlier_stage, stage_ancestors

    if args.mixture:
        # `"skip": "continue"` starts past what the stages this run follows drew
        stages = stage_ancestors({"init_from": earlier_stage(Path(args.init_from))}) if args.init_from else []
        return Mixture.load(args.mixture).after([stage.get("mixture") for stage in stages])
    return Mixture(sources=[MixtureSource("labels", path=args.labels)]
                   + ([MixtureSource("gold", repeats=args.gold_repeats)] if args.gold_repeats else []))


def _distill_encoder(args: argparse.Namespace) -> int:
    from hotmem.data import load_gold
    from hotmem.pipeline.encoder import (STAGE_TWO_LEARNING_RATES, EncoderConfig, calibrate_thresholds,
                                         mixture_pairs, soup_encoders, train_encoder)

    if args.soup:
        result = soup_encoders(args.soup, EncoderConfig(out_dir=args.out, int8=True), weights=args.soup_weights)
    else:
        mixture = _mixture(args)
        config = EncoderConfig(out_dir=args.out, epochs=args.epochs, save_steps=args.save_steps,
                               max_steps=args.max_steps if args.max_steps > 0 else None,
                               negatives=mixture.negatives, whole_schema_rate=mixture.whole_schema_rate,
                               seed=mixture.seed, int8=True, partial_entities=args.partial_entities,
                               init_from=args.init_from, **(STAGE_TWO_LEARNING_RATES if args.init_from else {}))
        pairs, sources = mixture_pairs(mixture)
        result = train_encoder(config, pairs, sources=sources, mixture=mixture)
    # decoding thresholds chosen on gold dev (held out of every mixture), written into student.json
    calibrated = calibrate_thresholds(result.out_dir, load_gold("dev"))
    m = result.manifest
    print(f"encoder: {json.dumps({k: v for k, v in m.items() if not isinstance(v, (dict, list))})}; "
          f"thresholds {calibrated['thresholds']} (gold dev relation F1 {calibrated['relation_f1']}); "
          f"exported to {result.out_dir}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from hotmem.pipeline.distill import STAGE_TWO_LEARNING_RATE, DistillConfig, distill, sft_dataset
    from hotmem.pipeline.mixture import build_examples

    if args.student == "encoder":
        return _distill_encoder(args)
    if args.soup:
        from hotmem.pipeline.distill import soup_students

        result = soup_students(args.soup, DistillConfig(out_dir=args.out, base_model=args.base),
                               weights=args.soup_weights, rank=args.lora_r)
        print(f"soup of {len(args.soup)} runs, rank {result.manifest['recipe']['lora_r']} (share of the sum left "
              f"out {result.manifest['soup_left_out']}), "
              f"{result.manifest['soup_seconds']} s; exported to {result.out_dir}")
        return 0
    if args.checkpoint:
        from hotmem.pipeline.distill import export_checkpoint

        print(f"exported {args.checkpoint} to {export_checkpoint(args.checkpoint, args.out)}")
        return 0
    learning_rate = args.learning_rate or (STAGE_TWO_LEARNING_RATE if args.init_from else DistillConfig.learning_rate)
    lora_r = args.lora_r or DistillConfig.lora_r
    config = DistillConfig(
        out_dir=args.out, base_model=args.base, backend=args.backend, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, lora_r=lora_r, lora_alpha=2 * lora_r,
        max_seq_length=args.max_seq_length, save_steps=args.save_steps, init_from=args.init_from,
        learning_rate=learning_rate,
    )
    if args.init_from and not args.lora_r:  # a later stage trains the earlier run's adapter on, of its shape
        from hotmem.pipeline.distill import earlier_lora_shape

        config.lora_r, config.lora_alpha = earlier_lora_shape(config)
    mixture = _mixture(args)
    if args.answer_format:
        mixture.answer_format = args.answer_format
    rows, sources = build_examples(mixture)
    for name, counts in sources.items():
        logging.getLogger("hotmem").info("%s: %d examples (%d with relations, %d too long)", name,
                                         counts["examples"], counts["with_relations"], counts["too_long"])
    result = distill(config, sft_dataset(rows), sources=sources, mixture=mixture)
    m = result.manifest
    print(f"{m['backend']}: {m['global_step']} steps, loss {m['train_loss']:.3f}, {m['seconds_per_step']} s/step, "
          f"{m['tokens_per_second']} tokens/s, {m['seconds_total'] / 3600:.2f} h over {m['sessions']} session(s), "
          f"peak {m['peak_rss_gb']} GB; exported to {result.out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotmem", description="Conversation to knowledge graph, locally.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    extract = sub.add_parser("extract", help="print the graph of a text ('-' reads stdin)")
    extract.add_argument("text", nargs="+")
    extract.add_argument("--json", action="store_true", help="print the graph as JSON")
    extract.add_argument("--speaker", default=None, help="who says the text (I/me/my resolve to this name)")
    extract.add_argument("--open", action="store_true", help="allow predicates outside the schema")
    _add_lm(extract)
    extract.set_defaults(func=_extract)

    evaluate = sub.add_parser("evaluate", help="score a program on an annotated data set")
    evaluate.add_argument("--dataset", default="gold", help="gold, personaext, dialogre, convai2 or conll04; "
                          "personaext-conversation etc.: mapped onto the conversation schema")
    evaluate.add_argument("--path", default=None, help="data set file or folder (default: ../shared/data/...)")
    evaluate.add_argument("--split", default=None,
                          help="gold: train/dev/test; dialogre: dev/train; conll04: valid/train")
    evaluate.add_argument("--program", default="default",
                          help=_PROGRAM_HELP + "; 'student' / 'encoder' (the shipped LoRA / encoder student) or a "
                          "folder `hotmem distill` exported; 'auto' (what GraphExtractor() runs)")
    evaluate.add_argument("--limit", type=int, default=None, help="first N examples only")
    evaluate.add_argument("--out", default=None, help="folder for rows.jsonl (resumable), report.md and report.json")
    evaluate.add_argument("--open", action="store_true", help="open extraction (predicates outside the schema)")
    evaluate.add_argument("--cache", action="store_true", help="reuse cached LM answers (latency is then meaningless)")
    evaluate.add_argument("--rescore", action="store_true",
                          help="score the graphs already in --out against the data as now loaded, without rerunning")
    evaluate.add_argument("--json", action="store_true", help="also print the summary as JSON")
    _add_sampling(evaluate, "graphs")
    _add_lm(evaluate)
    evaluate.set_defaults(func=_evaluate)

    from hotmem.lm import LABELLING_LM

    label = sub.add_parser("label", help="label a corpus with the teacher into a datasets.Dataset (resumable)")
    label.add_argument("source", help="a .txt (one utterance per line) or .jsonl file, 'convai2' / 'dialogre', or an "
                       "annotated corpus whose labels are scored against its annotations: 'personaext-conversation', "
                       "'convai2-conversation', 'dialogre-conversation', 'conll04-conversation', 'gold' "
                       "(training parts)")
    label.add_argument("--path", default=None, help="for convai2/dialogre: the data file (default: ../shared/data)")
    label.add_argument("--out", default="runs/labels", help="folder for labels.jsonl, dataset/ and report.json")
    label.add_argument("--program", default="default",
                       help=_PROGRAM_HELP + "; 'student' / 'encoder' (the shipped LoRA / encoder student) or a "
                       "folder `hotmem distill` exported")
    label.add_argument("--unseen-by", action="append", default=[], metavar="RUN",
                       help="leave out every record the training of RUN (a folder `hotmem distill` wrote, or "
                       "'student' / 'encoder': a shipped one) and of the runs in its weights drew: labels on text "
                       "it was not taught (repeatable: text none of them was taught)")
    label.add_argument("--limit", type=int, default=None, help="first N utterances of the corpus")
    label.add_argument("--seed", type=int, default=None, help="an annotated corpus: shuffle it with this seed first")
    label.add_argument("--threads", type=int, default=1, help="concurrent requests (for a served LM)")
    label.add_argument("--min-confidence", type=float, default=0.7, help="remove relations with a lower confidence")
    label.add_argument("--drop-whole", action="store_true",
                       help="drop a label with any problem instead of removing just its bad entities and relations")
    _add_sampling(label, "labels")
    _add_lm(label, fallback=f"HOTMEM_LM, else {LABELLING_LM}")
    label.set_defaults(func=_label)

    dist = sub.add_parser("distill", help="train the student LoRA on labels from `hotmem label` and export it")
    dist.add_argument("--student", default="lora", choices=("lora", "encoder"),
                      help="lora: a LoRA on a 0.5B Qwen (llama.cpp); encoder: a span extractor on MiniLM (ONNX)")
    dist.add_argument("--mixture", default=None,
                      help="the supervision: a mixture file, or the name of a shipped one ('default': gold, "
                           "PersonaExt, ConvAI2/DNLI, DialogRE and CoNLL04 train parts, each in its own schema); "
                           "a source's \"skip\": \"continue\" draws past what the --init-from run's stages drew")
    dist.add_argument("--labels", default="runs/labels", help="without --mixture: the folder `hotmem label` wrote")
    dist.add_argument("--out", default="runs/student", help="checkpoints (resumable) and exports")
    dist.add_argument("--base", default="Qwen/Qwen2.5-0.5B-Instruct",
                      help="hub id, or an embedded model's name (qwen2.5-coder-1.5b) to dequantize; without a hub, "
                           "the embedded Qwen2.5-Coder-0.5B GGUF is dequantized instead")
    dist.add_argument("--backend", default="auto", help="auto (Unsloth on a CUDA GPU, else TRL), unsloth or trl")
    dist.add_argument("--epochs", type=float, default=1.0)
    dist.add_argument("--max-steps", type=int, default=-1)
    dist.add_argument("--batch-size", type=int, default=4)
    dist.add_argument("--learning-rate", type=float, default=None,
                      help="lora: default 2e-4, 1e-4 with --init-from")
    dist.add_argument("--lora-r", type=int, default=None,
                      help="LoRA rank, alpha twice that (default 16; with --init-from the earlier run's rank and "
                           "alpha; with --soup the soup's rank)")
    dist.add_argument("--max-seq-length", type=int, default=2048)
    dist.add_argument("--save-steps", type=int, default=25)
    dist.add_argument("--partial-entities", action="store_true",
                      help="encoder: corpora that annotate only some entity mentions teach no 'not an entity' away "
                           "from their annotated spans")
    dist.add_argument("--init-from", default=None, metavar="RUN",
                      help="start from a finished run's weights (or an exported student's adapter GGUF, e.g. "
                           "optimized/student) at lower learning rates: a later stage (encoder: `--mixture "
                           "encoder-conversation` after `--mixture encoder`; lora: the shipped student's chain of "
                           "stages and mixtures is in optimized/student/report.md)")
    dist.add_argument("--soup", nargs="+", default=None, metavar="RUN",
                      help="average the weights of finished runs that share an earlier stage (a model soup) instead "
                           "of training; lora: the sum of their updates as one adapter of their summed rank, or with "
                           "--lora-r its best approximation of that rank")
    dist.add_argument("--soup-weights", nargs="+", type=float, default=None, metavar="W",
                      help="a weight per --soup run (default: the mean)")
    dist.add_argument("--checkpoint", default=None, metavar="DIR",
                      help="lora: export a checkpoint of a run (still training) to --out as a runnable student, "
                           "instead of training")
    dist.add_argument("--answer-format", default=None, choices=("json", "lines"),
                      help="lora: how the student writes its graph (default: the mixture's, else json); lines: a "
                           "fact a line, about a third fewer output tokens")
    dist.add_argument("--gold-repeats", type=int, default=0,
                      help="mix our gold train split into the labels this many times (dev and test stay held out)")
    dist.set_defaults(func=_distill)

    opt = sub.add_parser("optimize", help="optimize the teacher with GEPA and save it")
    opt.add_argument("--train", default="gold", help="training data set name (default: gold)")
    opt.add_argument("--train-path", default=None)
    opt.add_argument("--train-split", default="train")
    opt.add_argument("--train-skip", type=int, default=0, help="skip the first N records")
    opt.add_argument("--train-limit", type=int, default=None)
    opt.add_argument("--val", default="gold", help="validation data set name (default: gold)")
    opt.add_argument("--val-path", default=None)
    opt.add_argument("--val-split", default="dev")
    opt.add_argument("--val-skip", type=int, default=0)
    opt.add_argument("--val-limit", type=int, default=None)
    opt.add_argument("--val-extra", action="append", metavar="NAME[:SKIP:LIMIT]",
                     help="more validation records from another data set in the same schema, e.g. "
                          "personaext-conversation:1000:100 (PersonaExt lines 1,001-1,100 mapped); repeatable")
    opt.add_argument("--reflection-lm", default="embedded/qwen2.5-coder-1.5b", help="LM that proposes instructions")
    opt.add_argument("--budget", default="light",
                     help="light, medium, heavy, or a number of metric calls (0: save the program without GEPA)")
    opt.add_argument("--proposer", default="rule", choices=("rule", "contrast", "gepa"),
                     help="rule: add one learned rule per step (small reflection LMs); contrast: relations rules "
                          "written from the metric's corrections, no LM; gepa: GEPA's full rewrite")
    opt.add_argument("--demos", type=int, default=0,
                     help="gold demonstrations for the entities and relations steps, chosen before GEPA (0: none)")
    opt.add_argument("--retrieve", default="0",
                     help="annotated examples retrieved per input for the entities and relations steps (0: none), "
                          "or how many from each source: gold=3,personaext-conversation=1")
    opt.add_argument("--reads", default="statements", choices=("statements", "sentences"),
                     help="what the entities and relations steps read: the decompose step's statements, or the "
                          "sentences as said (coref and decompose skipped)")
    opt.add_argument("--verify", action="store_true",
                     help="check each proposed fact with one more LM call, keeping those the text states (precision)")
    opt.add_argument("--verify-threshold", type=float, default=None,
                     help="with --verify: keep a fact when the check's probability that the text states it reaches "
                          "this (the LM must report log-probabilities), instead of by its answer")
    opt.add_argument("--pool", default="gold,personaext-conversation",
                     help="mixture sources the retrieved demonstrations come from (with a number for --retrieve)")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--threads", type=int, default=1, help="parallel evaluations (1 for the in-process model)")
    opt.add_argument("--log-dir", default="runs/gepa", help="GEPA state: rerun the same command to resume")
    opt.add_argument("--out", default="optimized/teacher", help="folder for the optimized program and its report")
    opt.add_argument("--open", action="store_true", help="open extraction")
    _add_lm(opt)
    opt.set_defaults(func=_optimize)

    from hotmem.memory.cli import add_parser as add_memory_parser

    add_memory_parser(sub)
    return parser


def _setup_logging(verbose: bool) -> None:
    """hotmem's own progress lines at INFO ("hotmem: ..."), everything else (LiteLLM, DSPy, llama.cpp's native
    log) at WARNING; `-v` shows all of it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "hotmem: %(message)s"))
    own = logging.getLogger("hotmem")
    own.setLevel(logging.DEBUG if verbose else logging.INFO)
    for earlier in [h for h in own.handlers if getattr(h, "hotmem_cli", False)]:  # main() called again in-process
        own.removeHandler(earlier)
    handler.hotmem_cli = True
    own.addHandler(handler)
    own.propagate = False
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except HotmemError as exc:
        print(f"hotmem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hotmem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
