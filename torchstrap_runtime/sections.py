"""The standard config sections that `Trainer` reads, and the keys that `data.experiment_loaders` (the loaders'
settings) and `models.backbone` (`model.stem`, `model.zero_init_residual`) read. Experiments add their own in
their `config.py`.

Importing this module declares them; `declare_standard_sections()` declares them again after
`config.reset_config()` (tests). Every value has a default, so a Trainer runs with no config file.
"""

from __future__ import annotations

from .best import MONITOR_MODES
from .config import Bool, Dict, Float, Int, ListOf, ListOfInt, OneOf, OptionalInt, Param, Section, Str
from .device import COMPILE_MODES, DTYPES
from .mirrors import BACKENDS
from .optim import OPTIMIZERS, SCHEDULERS
from .run_folder import CONFIG_FILE, LOG_FILE


def declare_standard_sections() -> None:
    Section("training", "the training loop").params(
        epochs=Param(Int(min=1), "number of epochs", default=10),
        eval_only=Param(Bool(), "only evaluate (no train loader, optimizer or scheduler)", default=False),
        seed=Param(OptionalInt(min=0), "seed of python/numpy/torch RNGs (model init, dropout); null = fresh", default=0),
        deterministic=Param(Bool(), "deterministic kernels only (torch.use_deterministic_algorithms, cuDNN without "
                            "autotuning): bitwise-reproducible GPU steps, often slower; an op without one stops the "
                            "run naming it", default=False),
        device=Param(Str(), "'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...", default="auto"),
        dtype=Param(OneOf(DTYPES), "compute dtype; bfloat16/float16 use AMP", default="float32"),
        channels_last=Param(Bool(), "channels_last memory format for conv models", default=False),
        grad_clip=Param(Float(min=0), "clip the gradient norm to this value (0 = off)", default=0.0),
        accumulate=Param(Int(min=1), "gradient accumulation: batches per optimizer step", default=1),
        ema_decay=Param(Float(min=0, max=1, max_exclusive=True), "EMA of the weights with this decay, evaluated instead of them (0 = off)", default=0.0),
        compile=Param(Bool(), "torch.compile the model", default=False),
        compile_mode=Param(OneOf(COMPILE_MODES), "torch.compile's mode: default | reduce-overhead (CUDA graphs) | "
                           "max-autotune | max-autotune-no-cudagraphs", default="default"),
        cudnn_benchmark=Param(Bool(), "let cuDNN time its convolution algorithms for each input shape (CUDA; "
                              "faster steps, not bitwise reproducible)", default=False),
        pin_memory=Param(Bool(), "copy host batches to the GPU from page-locked memory, without blocking", default=True),
        limit_train_batches=Param(Int(min=0), "train on at most this many batches per epoch (0 = all)", default=0),
        limit_val_batches=Param(Int(min=0), "evaluate on at most this many batches (0 = all)", default=0),
        fast_dev_run=Param(Bool(), "one train and one val batch, no logs or checkpoints written", default=False),
        patience=Param(Int(min=0), "stop after this many epochs without a better logging.monitor (0 = off)", default=0),
        stop_on_nan=Param(Bool(), "stop the run when the training loss is not finite", default=True),
        resume_changed=Param(Bool(), f"resume a run with values that differ from its {CONFIG_FILE} (recorded there); "
                             "without it only training.epochs, eval_only, data.num_workers and logging.* may change",
                             default=False),
    )
    Section("model", "the network").params(
        name=Param(Str(), "model name (see the experiment's models.py)", default="mlp"),
        num_classes=Param(Int(min=1), "number of outputs of the classifier head", default=10),
        load_from=Param(Str(), "checkpoint to start from ('' = none)", default=""),
        load_optimizer=Param(Bool(), "with load_from: also restore the optimizer state", default=False),
        load_scheduler=Param(Bool(), "with load_from: also restore the scheduler state", default=False),
        load_epoch=Param(Bool(), "with load_from: also continue from its epoch", default=False),
        sync_bn=Param(Bool(), "convert BatchNorm to SyncBatchNorm when world size > 1", default=True),
        stem=Param(OneOf(["auto", "cifar", "imagenet"]), "ResNet stem: cifar (3x3 conv, no max-pool), imagenet (7x7/2 conv "
                   "+ max-pool), auto = cifar up to 64 px", default="auto"),
        zero_init_residual=Param(Bool(), "ResNet: start each residual branch's last BatchNorm at zero", default=False),
    )
    Section("data", "datasets and loaders (the experiment's config.py declares its dataset: train_path, val_path, "
            "image_size)").params(
        batch_size=Param(Int(min=1), "training batch size (per process)", default=64),
        val_batch_size=Param(Int(min=1), "validation batch size (per process)", default=256),
        num_workers=Param(Int(min=-1), "loader worker threads (-1 or 0 = one per core)", default=2),
        loader_seed=Param(OptionalInt(min=0), "seed of the data order (null = fresh each run)", default=0),
        os_cache=Param(Bool(), "let the OS page cache hold the .beton (false, for data larger than RAM: read it page "
                       "by page, quasi-random order)", default=True),
    )
    Section("optimizer", "the optimizer").params(
        name=Param(OneOf(OPTIMIZERS), "optimizer (lars: SGD with a layer-wise trust ratio, SSL recipes)", default="sgd"),
        lr=Param(Float(min=0, min_exclusive=True), "learning rate", default=0.1),
        momentum=Param(Float(min=0, max=1, max_exclusive=True), "SGD momentum", default=0.9),
        weight_decay=Param(Float(min=0), "weight decay", default=5e-4),
        nesterov=Param(Bool(), "SGD Nesterov momentum", default=False),
        exclude_norm_bias=Param(Bool(), "no weight decay (and no LARS adaptation) on norm-layer parameters and biases", default=False),
        fused=Param(Bool(), "torch's fused kernel for sgd, adam and adamw (one kernel for all parameters; lars has "
                    "none)", default=False),
    )
    Section("scheduler", "the learning-rate schedule").params(
        name=Param(OneOf(SCHEDULERS),
                   "none | cosine | step, multistep (the lr changes at epoch ends) | onecycle | ffcv_cyclic, ffcv_step, "
                   "ffcv_cifar_cyclic (FFCV's recipes: the lr changes every step)", default="cosine"),
        warmup_epochs=Param(Float(min=0), "linear warm-up epochs (not ffcv_*: they ramp up to lr_peak_epoch)", default=0.0),
        min_lr=Param(Float(min=0), "lowest lr: end of cosine, floor of step/multistep, end of onecycle", default=0.0),
        step_size=Param(Int(min=1), "StepLR: epochs between decays", default=30),
        milestones=Param(ListOfInt(min=1), "MultiStepLR: epochs where the lr decays, e.g. [30, 60] or 30,60", default=[30, 60]),
        gamma=Param(Float(min=0, max=1, min_exclusive=True), "StepLR/MultiStepLR decay factor", default=0.1),
        lr_peak_epoch=Param(Int(min=0), "ffcv_cyclic, ffcv_cifar_cyclic: epoch at which the lr peaks", default=2),
    )
    Section("criterion", "the loss (any torch.nn or pytorch-metric-learning loss, or CoKe)").params(
        name=Param(Str(), "loss name, e.g. CrossEntropyLoss, TripletMarginLoss, coke_multi_view", default="CrossEntropyLoss"),
        params=Param(Dict(), "keyword arguments of the loss, e.g. {label_smoothing: 0.1}", default={}),
        miner=Param(Str(), "pytorch-metric-learning miner ('' = none)", default=""),
        miner_params=Param(Dict(), "keyword arguments of the miner", default={}),
    )
    Section("logging", "run folder, logs and checkpoints").params(
        folder=Param(Str(), "parent folder of the run folders", default="runs"),
        run_id=Param(Str(), "run folder name ('' = generated); an existing run resumes", default=""),
        eval_each_epoch=Param(Bool(), "evaluate on the validation set after each epoch", default=True),
        log_every=Param(Int(min=0), "log the training loss every N steps (0 = only per epoch)", default=10),
        checkpoint_every=Param(Int(min=0), "also checkpoint every N steps (0 = only at epoch ends)", default=0),
        progress=Param(Bool(), "show progress bars", default=True),
        eval_every=Param(Int(min=1), "with eval_each_epoch: evaluate every N epochs (and after the last)", default=1),
        monitor=Param(Str(), "epoch value that ranks checkpoints, e.g. val_top1 ('' = none)", default=""),
        monitor_mode=Param(OneOf(MONITOR_MODES), "whether a higher (max) or lower (min) monitor is better", default="max"),
        save_top_k=Param(Int(min=1), "with monitor: keep checkpoints/best.pt, and epoch_<E>.pt of the k best when k > 1", default=1),
        backends=Param(ListOf(OneOf(BACKENDS)),
                       f"mirror every log() scalar to these: tensorboard, csv, wandb, mlflow ({LOG_FILE} stays the record)",
                       default=[]),
        doctor=Param(Bool(), "after the first epoch on FFCV loaders, measure where the time goes (loader, step, "
                     "each op) into doctor.json, with advice", default=True),
        tags=Param(ListOf(Str()), "labels of this run, e.g. [baseline, ablation] (shown by `torchstrap runs`)", default=[]),
    )


declare_standard_sections()
