"""Interpreting decoupled networks (paper Sec. 4.2 and 4.4): calculation paths, filter states,
path embeddings, occlusion and adversarial-sample detection.

    ps = collect_paths(engine_or_model, images, labels)     # PathSet: bits, labels, predictions
    save_paths("paths.safetensors", ps); load_paths(...)      # compact, atomic, verified
    filter_states(ps)                                          # energetic / silent / dynamic
    embed_tsne(ps.paths); knn_class_accuracy(...)              # Fig. 3 and a number for it
    occlusion_effect(runner, image, region)                    # Fig. 6
    fgsm / pgd + detection_auc                                 # Table 4
    run_analysis(AnalyzeConfig(...))                           # everything: `dyninfer analyze`
"""
from .adversarial import CLASSIFIERS, detection_auc, detection_table, fgsm, make_classifier, pgd
from .embedding import embed_tsne, knn_class_accuracy, plot_embeddings
from .occlusion import OcclusionResult, Region, filter_receptive_fields, occlude, occlusion_effect, plot_occlusion
from .paths import (PathFileError, PathSet, activation_thresholds, binarize, collect_activations, collect_paths,
                    load_paths, save_paths, stack_dataset)
from .report import AnalyzeConfig, run_analysis
from .states import FilterStates, LayerStates, filter_states, plot_filter_states

__all__ = ["CLASSIFIERS", "detection_auc", "detection_table", "fgsm", "make_classifier", "pgd", "embed_tsne",
           "knn_class_accuracy", "plot_embeddings", "OcclusionResult", "Region", "filter_receptive_fields", "occlude",
           "occlusion_effect", "plot_occlusion", "PathFileError", "PathSet", "activation_thresholds", "binarize",
           "collect_activations", "collect_paths", "load_paths", "save_paths", "stack_dataset", "AnalyzeConfig",
           "run_analysis", "FilterStates", "LayerStates", "filter_states", "plot_filter_states"]
