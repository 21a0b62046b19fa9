"""The commented training.yaml that ``setup_training.py`` writes: parsed, it is the built-in defaults.

One text serves as the defaults and as the user's documentation (``toolkit.core.config``), so the
two cannot drift. Adding a setting: a line here with its comment, and an entry in config's ``KEYS``.
"""

TRAINING_YAML_TEMPLATE = """\
# Training and promotion settings of the defect-model retraining toolkit.
# Precedence: built-in defaults < this file < command-line flags.
# Edit freely: setup_training.py never overwrites this file unless you pass --force
# (and then it keeps your version as training.yaml.bak). Unknown keys are an error.

training:
  # What a model trained "from scratch" starts from (the first model, and the scratch route):
  # an architecture (yolov8n/s/m/l/x.yaml, random weights) or a .pt on disk - COCO-pretrained
  # yolov8n.pt or a model of a sister line - whose weights start the training, with a new class
  # head when its classes differ. A first model on a few hundred images learns far more from
  # such weights. The toolkit never downloads anything.
  arch: yolov8n.yaml
  # What the pipeline trains: finetune (production + all data), scratch (arch, all data),
  # both (two runs; the better on the validation split meets production on test), or auto:
  # both when both fit time_limit (a night when unset) by this machine's measured speed, else
  # the route that won this workspace's earlier 'both' runs (fine-tune without such a record);
  # scratch without production or when the classes changed. The report says why.
  strategy: auto
  # Starting point of train_yolov8.py: production (fine-tune yolov8_model.pt), scratch (arch),
  # or a .pt path. Empty: production when yolov8_model.pt exists, else scratch.
  # In the pipeline, --from overrides the strategy.
  start_from: ""
  # Every value below is ultralytics' own default unless marked; a value that differs stays
  # only with a measured gain (README.md, "Training recipes and the NEU-DET benchmark").
  epochs: 100
  # Pixels of the long side the images are resized to for training, or auto: 640, unless a class
  # has 10% or more of its boxes under 16 px there (two cells of the finest stride: often missed) -
  # then the size that shows 90% of them, when the estimated run fits time_limit (a night when
  # unset). Import, the dry run and the reports name such classes at any size.
  imgsz: 640
  # Images per batch. auto: 64 on a GPU with 16 GB or more for yolov8n/s (ultralytics' nominal
  # batch), else -1 (ultralytics measures what fits); 16 on a CPU.
  batch: auto
  # "" = first GPU if there is one, else cpu. "0", "0,1,2,3" (several GPUs: DDP) or "cpu".
  device: ""
  # Data loader processes. auto: per GPU, the cores minus one, at most 8; 0 on a CPU (there
  # ultralytics loads data in the training process anyway).
  workers: auto
  # Stop when validation mAP has not improved for this many epochs (best.pt is kept).
  patience: 100
  seed: 0
  # Hours; stops the run cleanly when reached (0 = no limit). Useful for nightly windows;
  # auto strategy keeps within it. pipeline --dry-run says about how long a run takes.
  time_limit: 0
  # Cache decoded images in RAM ("ram"), on disk ("disk") or not at all (""): faster epochs.
  cache: ""
  optimizer: auto
  # Augmentation: ultralytics' defaults. The "metal" values once here (hsv_h 0, hsv_s 0,
  # hsv_v 0.3, scale 0.3, flipud 0.5) scored below these on an H100 from scratch (test mAP50 /
  # mAP50-95 0.775 / 0.435 vs 0.786 / 0.453); no GPU run over 3 seeds shows a gain (README.md,
  # "Training recipes"), so they are not the default.
  augment:
    hsv_h: 0.015
    hsv_s: 0.7
    hsv_v: 0.4
    degrees: 0.0
    translate: 0.1
    scale: 0.5
    fliplr: 0.5
    flipud: 0.0
    mosaic: 1.0
    mixup: 0.0
    close_mosaic: 10

dataset:
  # Share of images per split for newly added images (stratified per class).
  split: {train: 0.8, val: 0.1, test: 0.1}
  # Stop an import when more than this share of a batch is bad input.
  max_bad_fraction: 0.2
  # Perceptual-hash distance (bits of 64) at or below which two images are near-duplicates.
  near_duplicate_bits: 4
  # Images that come in lots (a coil, a plate, a board design) are near-copies: a lot must never
  # span train and test. Empty: no lots. A regular expression on the file name (on the path
  # within the batch when it holds a '/'): the lot is its first group, e.g. '^(coil\d+)_';
  # or csv:COLUMN for that column of groups.csv in the batch (columns: image, COLUMN).
  group_by: ""

evaluation:
  # Every model is scored on this split with the same settings (fair comparison).
  split: test
  # Image size for scoring. Empty: each model at the size it was trained at (read from the
  # checkpoint; ultralytics runs a model at that size by default). A number: every model at it.
  imgsz:
  batch: 16
  conf: 0.001
  iou: 0.7
  device: ""
  # Images timed per model for ms_per_image, after a warm-up batch (0 = do not time).
  speed_images: 16
  # The models take turns over this many timing rounds; ms_per_image is each model's median
  # round, and the speed rule's reason gives the spread of the rounds.
  speed_rounds: 5

promotion:
  # Metric that decides: map50_95 (stricter, default) or map50.
  metric: map50_95
  # Smallest gain over production worth a model change.
  min_gain: 0.005
  # Largest drop of any single class's AP50 that is still acceptable.
  max_class_drop: 0.05
  # Require the bootstrap 95% interval of the gain to lie above zero.
  require_significance: true
  bootstrap_resamples: 1000
  # Largest accepted slowdown of inference, as a ratio to production (1.5 = 50% slower).
  # Not applied to a candidate of production's architecture and input size (same cost by
  # construction); otherwise the ratio of the median timing rounds is judged.
  max_slowdown: 1.5
  # The confidence the line runs at (what the detection system logs, --scan's 0.25): recall
  # (1 - escape rate) and false calls per image of each class are measured there.
  operating_conf: 0.25
  # Largest accepted drop of any class's recall at operating_conf (0.05 = 5 points), even when
  # mAP rises: a model that lets more defects of one class escape is refused.
  max_recall_drop: 0.05
  # The line's spec: the recall each class must reach at operating_conf on the test split.
  # One number for every class, or per class, e.g. {short: 0.95, open: 0.9, default: 0.5}
  # (default: the classes not named; without it they take 0.5). 0.5: a model that misses
  # half of a class's defects is not fit for the line. A better model below spec is still
  # promoted (it is better than what runs), flagged BELOW SPEC wherever the decision is shown;
  # each class's conf_for_spec says at which confidence the spec would be met, and with how
  # many false calls per image.
  min_recall: 0.5
  # The first model of a workspace (no production yet) must reach at least this on the metric:
  # a model that detects almost nothing is not put into production (pipeline --force overrides).
  min_first_map: 0.05

memory_bank:
  # Where the detection system logs. Empty: ROOT/memory-bank/detections.jsonl. Else a file
  # (.jsonl, .json, .csv, SQLite) or a database URL such as
  # postgresql://inspector@dbhost:5432/inspection?table=detections (the password comes from
  # PGPASSWORD or .pgpass, never from this file). --memory-bank overrides it.
  url: ""

analyzer:
  # Confidence band where the model is unsure: those detections are the most useful to label.
  uncertain: [0.25, 0.6]
  # IoU at which a detection matches a reviewed label.
  iou_match: 0.5
  # --export skips an image within this perceptual-hash distance (bits of 64) of one already
  # chosen. Looser than dataset.near_duplicate_bits: on NEU-DET, 8 bits still finds no distinct
  # pair and catches 99% of copies shifted by 2 px (4 bits: 68%).
  near_duplicate_bits: 8
  # --export shares its picks among classes in proportion to priority score ** this power
  # (1: by score; 0: equal shares, most uncertain first within each class, missed classes taking
  # one share). 0 measured better than 1 on NEU-DET (CPU proxy, benchmarks/results/).
  class_weight_power: 0.0
  # How --export chooses: confident (class quotas, typical clusters of the production model's own
  # embeddings, in each cluster the image the model is surest of) | hybrid (the same clusters, the
  # most uncertain of each cluster's typical half) | diversity (the most typical image of each
  # cluster) | uncertainty (uncertain detections first) | random. On NEU-DET (README,
  # benchmarks/results/2026-12-06-cpu-proxy.md) confident's 90 images were worth 1.4x as many random
  # ones, its 30 and 240 about as many (no mode beat random at 30): compare them on your own line.
  selection: confident
  # Seed of the clustering and of the random selection (the same seed gives the same picks).
  seed: 0
"""
