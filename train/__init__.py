"""Fine-tuning and evaluating KoCLIP on captioned images (JSON Lines), apart from search.

from train import TrainOptions, evaluate, train
recall = evaluate("captions.jsonl", "images/", "koclip-base")
summary = train("mine.jsonl", "images/", "koclip-base", "out/", TrainOptions(epochs=3))
"""

from train.captions import CaptionRecord, CaptionsError, read_captions
from train.evaluate import Recall, evaluate, evaluate_records, recall_at_k
from train.training import (
    TrainDataError,
    TrainError,
    TrainOptions,
    TrainProgress,
    TrainSummary,
    train,
)

__all__ = [
    "CaptionRecord",
    "CaptionsError",
    "Recall",
    "TrainDataError",
    "TrainError",
    "TrainOptions",
    "TrainProgress",
    "TrainSummary",
    "evaluate",
    "evaluate_records",
    "read_captions",
    "recall_at_k",
    "train",
]
