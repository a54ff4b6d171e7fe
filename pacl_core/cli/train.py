"""`python -m pacl_core train --train-data DATA --out DIR`: train a PACL vision embedder on image-caption pairs.

Single process: `python -m pacl_core train ...`; several GPUs / nodes: `torchrun --nproc_per_node 8 -m pacl_core
train ... --device cuda` (the batch size is global). Defaults are the paper's: lr 5e-4, wd 0.2, batch 4096, 10 epochs.
"""

from __future__ import annotations

from pacl_core.cli.args import add_model_args
from pacl_core.train.distributed import env_world
from pacl_core.train.loop import PRECISIONS, TrainConfig, config_from_args, train

D = TrainConfig("", "")  # the defaults, shown in --help


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a PACL head (e_v) on image-caption pairs",
                       description="Train the PACL vision embedder e_v on a frozen CLIP with the PACL loss. "
                                   "Multi-GPU: torchrun --nproc_per_node N -m pacl_core train ... --device cuda")
    g = p.add_argument_group("data")
    g.add_argument("--train-data", required=True,
                   help="webdataset shards (DIR, a.tar, 'shards/{00000..00099}.tar', globs; '::' joins several), "
                        "a CSV/TSV (image path + caption), or a COCO captions JSON")
    g.add_argument("--data-format", default="auto", choices=("auto", "wds", "csv", "coco"))
    g.add_argument("--images", default=None,
                   help="image folder: root of relative CSV paths (default: the CSV's folder) or COCO's images "
                        "(default: ../train2017 beside annotations/captions_train2017.json)")
    g.add_argument("--csv-img-key", default=D.csv_img_key, help="CSV column of image paths (default: %(default)s)")
    g.add_argument("--csv-caption-key", default=D.csv_caption_key, help="CSV column of captions (default: %(default)s)")
    g.add_argument("--csv-separator", default=None, help="CSV separator (default: tab for .tsv, comma for .csv)")
    g.add_argument("--train-num-samples", type=int, default=None,
                   help="samples per epoch for tar shards (default: img2dataset *_stats.json, else a header scan)")
    g.add_argument("--max-samples", type=int, default=None, help="use only the first N pairs (quick runs)")
    g.add_argument("--workers", type=int, default=D.workers,
                   help="image decoding threads per process (default: %(default)s)")
    m = add_model_args(p, D.model, templates=False,
                       image_size_help="training crop size (default: the model's native size)")
    m.add_argument("--init", default=D.init, choices=("projection", "random"),
                   help="start e_v as CLIP's own patch projection, or random (default: %(default)s)")
    m.add_argument("--hidden-dim", type=int, default=None, help="e_v MLP width (default: the output dim)")
    m.add_argument("--tau", type=float, default=D.tau,
                   help="patch-attention softmax temperature (default: %(default)s)")
    m.add_argument("--logit-scale", type=float, default=None, help="InfoNCE logit scale (default: CLIP's, 100)")
    o = p.add_argument_group("optimization")
    o.add_argument("--epochs", type=int, default=D.epochs, help="(default: %(default)s, the paper's)")
    o.add_argument("--batch-size", type=int, default=D.batch_size,
                   help="global batch = contrastive batch, split over processes (default: %(default)s, the paper's)")
    o.add_argument("--lr", type=float, default=D.lr,
                   help="peak AdamW learning rate (default: %(default)s, the paper's)")
    o.add_argument("--wd", type=float, default=D.wd, help="AdamW weight decay (default: %(default)s, the paper's)")
    o.add_argument("--beta1", type=float, default=D.beta1, help="(default: %(default)s)")
    o.add_argument("--beta2", type=float, default=D.beta2, help="(default: %(default)s)")
    o.add_argument("--eps", type=float, default=D.eps, help="(default: %(default)s)")
    o.add_argument("--warmup", type=int, default=D.warmup, help="linear warm-up steps before the cosine decay "
                                                                "(default: %(default)s)")
    o.add_argument("--grad-clip", type=float, default=D.grad_clip,
                   help="max gradient norm, 0 = off (default: %(default)s)")
    o.add_argument("--precision", default=D.precision, choices=PRECISIONS,
                   help="auto = amp_bf16 on GPU, fp32 on CPU; amp = float16 with loss scaling (default: %(default)s)")
    o.add_argument("--backbone-chunk", type=int, default=D.backbone_chunk,
                   help="images per frozen-backbone forward (memory only; default: %(default)s)")
    o.add_argument("--loss-chunk", type=int, default=None,
                   help="elements per intermediate of the chunked loss (memory/speed only; default: 2^26 on GPU, "
                        "2^22 on CPU)")
    o.add_argument("--seed", type=int, default=D.seed, help="data order and e_v init (default: %(default)s)")
    o.add_argument("--max-steps", type=int, default=None, help="stop (and end the schedule) after N steps")
    c = p.add_argument_group("token cache")
    c.add_argument("--cache-tokens", default=None, metavar="DIR",
                   help="store the frozen ViT's patch tokens and the captions' text embeddings in DIR as they are "
                        "first computed, and read them afterwards: later epochs run only e_v. Valid for one "
                        "model, image size and the deterministic transform (resize + centre crop; no random "
                        "augmentation); DIR may be reused by later runs with the same settings")
    c.add_argument("--cache-dtype", default=D.cache_dtype, choices=("fp16", "fp32"),
                   help="precision of the cached values (default: %(default)s, half the disk)")
    r = p.add_argument_group("output")
    r.add_argument("--out", required=True, help="run folder: head.safetensors, checkpoints/, log.csv")
    r.add_argument("--save-every", type=int, default=D.save_every,
                   help="checkpoint interval in steps (default: %(default)s)")
    r.add_argument("--keep", type=int, default=D.keep, help="checkpoints kept (default: %(default)s)")
    r.add_argument("--log-every", type=int, default=D.log_every,
                   help="log.csv interval in steps (default: %(default)s)")
    r.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard (needs tensorboard)")
    r.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest checkpoint in --out (or from PATH); starts fresh if there is none")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    summary = train(config_from_args(args))
    if env_world()[0] == 0:
        print(f"trained {summary['steps']}/{summary['total_steps']} steps, final loss {summary['final_loss']:.4f}; "
              f"head: {summary['head']}")
        if args.cache_tokens:
            f = summary["frozen"]
            print(f"token cache {args.cache_tokens}: {f['vit_images']} images through the ViT and "
                  f"{f['text_captions']} captions through the text tower in this run (process 0)")
        if summary["skipped"]:
            print("skipped samples (this process): " + ", ".join(f"{k} {v}" for k, v in summary["skipped"].items()))
    return 0
