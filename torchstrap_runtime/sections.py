"""The standard config sections that `Trainer` reads. Experiments add their own in their `config.py`.

Importing this module declares them; `declare_standard_sections()` declares them again after
`config.reset_config()` (tests). Every value has a default, so a Trainer runs with no config file.
"""

from __future__ import annotations

from .config import Anything, Bool, Float, Int, ListOf, ListOfInt, ListOfStr, OneOf, OptionalInt, Param, Section, Str


def declare_standard_sections() -> None:
    Section("training", "the training loop").params(
        epochs=Param(Int(), "number of epochs", default=10),
        eval_only=Param(Bool(), "only evaluate (no train loader, optimizer or scheduler)", default=False),
        seed=Param(OptionalInt(), "seed of python/numpy/torch RNGs (model init, dropout); null = fresh", default=0),
        device=Param(Str(), "'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...", default="auto"),
        dtype=Param(OneOf(["float32", "bfloat16", "float16"]), "compute dtype; bfloat16/float16 use AMP", default="float32"),
        channels_last=Param(Bool(), "channels_last memory format for conv models", default=False),
        grad_clip=Param(Float(), "clip the gradient norm to this value (0 = off)", default=0.0),
    )
    Section("model", "the network").params(
        name=Param(Str(), "model name (see the experiment's models.py)", default="mlp"),
        num_classes=Param(Int(), "number of outputs of the classifier head", default=10),
        load_from=Param(Str(), "checkpoint to start from ('' = none)", default=""),
        load_optimizer=Param(Bool(), "with load_from: also restore the optimizer state", default=False),
        load_scheduler=Param(Bool(), "with load_from: also restore the scheduler state", default=False),
        load_epoch=Param(Bool(), "with load_from: also continue from its epoch", default=False),
        sync_bn=Param(Bool(), "convert BatchNorm to SyncBatchNorm when world size > 1", default=True),
    )
    Section("optimizer", "the optimizer").params(
        name=Param(OneOf(["sgd", "adamw", "adam"]), "optimizer", default="sgd"),
        lr=Param(Float(), "learning rate", default=0.1),
        momentum=Param(Float(), "SGD momentum", default=0.9),
        weight_decay=Param(Float(), "weight decay", default=5e-4),
        nesterov=Param(Bool(), "SGD Nesterov momentum", default=False),
    )
    Section("scheduler", "the learning-rate schedule").params(
        name=Param(OneOf(["none", "cosine", "step", "multistep", "onecycle"]),
                   "none | cosine (per step) | step, multistep (per epoch) | onecycle (per step)", default="cosine"),
        warmup_epochs=Param(Float(), "linear warm-up epochs (cosine)", default=0.0),
        step_size=Param(Int(), "StepLR: epochs between decays", default=30),
        milestones=Param(ListOfInt(), "MultiStepLR: epochs where the lr decays, e.g. [30, 60] or 30,60", default=[30, 60]),
        gamma=Param(Float(), "StepLR/MultiStepLR decay factor", default=0.1),
    )
    Section("criterion", "the loss (any torch.nn or pytorch-metric-learning loss, or CoKe)").params(
        name=Param(Str(), "loss name, e.g. CrossEntropyLoss, TripletMarginLoss, coke_multi_view", default="CrossEntropyLoss"),
        params=Param(Anything(), "keyword arguments of the loss, e.g. {label_smoothing: 0.1}", default={}),
        miner=Param(Str(), "pytorch-metric-learning miner ('' = none)", default=""),
        miner_params=Param(Anything(), "keyword arguments of the miner", default={}),
    )
    Section("logging", "run folder, logs and checkpoints").params(
        folder=Param(Str(), "parent folder of the run folders", default="runs"),
        run_id=Param(Str(), "run folder name ('' = generated); an existing run resumes", default=""),
        eval_each_epoch=Param(Bool(), "evaluate on the validation set after each epoch", default=True),
        log_every=Param(Int(), "log the training loss every N steps (0 = only per epoch)", default=10),
        checkpoint_every=Param(Int(), "also checkpoint every N steps (0 = only at epoch ends)", default=0),
        progress=Param(Bool(), "show progress bars", default=True),
        # runs (issue 13)
        backends=Param(ListOf(OneOf(["tensorboard", "csv", "wandb", "mlflow"])),
                       "mirror every log() scalar to these: tensorboard, csv, wandb, mlflow (log.jsonl stays the record)",
                       default=[]),
        tags=Param(ListOfStr(), "labels of this run, e.g. [baseline, ablation] (shown by `torchstrap runs`)", default=[]),
    )


declare_standard_sections()
