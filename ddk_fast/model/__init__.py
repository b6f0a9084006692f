"""The masked transformer engine: a BERT-family encoder whose heads and FFN channels can be gated,
built from a stock transformers checkpoint, plus Structure (units kept) and physical pruning.

Model (``masked_transformer.py``)
    ``model = MaskedTransformer.from_pretrained(path_or_hf_model, num_labels=None,
    task_type=None|"classification"|"regression"|"multilabel"|"token_classification"|"qa", dtype=torch.float32)``
        path: a folder with config.json + model.safetensors (or pytorch_model.bin, read with
        weights_only=True), a stock BertModel / BertForSequenceClassification / RobertaModel /
        RobertaForSequenceClassification object (or the XLM-RoBERTa, ELECTRA and DistilBERT
        equivalents), or a folder written by ``ddk_fast.export.save_pruned``.
        Keeps the checkpoint's pooler + classifier; a fresh classifier (normal(0, initializer_range))
        when it has none or its label count differs from ``num_labels``.
    ``MaskedTransformer(config: TransformerConfig)`` -> randomly initialised model of that shape.
    ``out = model(input_ids, attention_mask=None, token_type_ids=None, head_gates=None, ffn_gates=None,
        path="auto", output_hidden_states=False, output_attention_scores=False,
        output_attention_probs=False, output_qkv=False, output_ffn=False, active_units=None)``
        -> ``MaskedTransformerOutput``:
        .logits [B, num_labels] ([B, S, num_labels] for token_classification: the classifier on every
        token, no pooler; [B, S, 2] for qa: each token's start and end logit, BertForQuestionAnswering's
        qa_outputs); .pooled [B, d]; .last_hidden_state [B, S, d];
        .hidden_states: tuple of L+1 [B, S, d] (embeddings first);
        .attention_scores: per layer [B, H_l, S, S] raw q.k/sqrt(D), *no* padding mask added;
        .attention_probs: per layer [B, H_l, S, S] softmax with the padding mask (what stock
            ``output_attentions`` returns); .qkv: per layer (q, k, v), each [B, H_l, S, D];
        .ffn_intermediate: per layer [B, S, I_l] = act(x W_in^T + b_in) * gate;
        .ffn_output: per layer [B, S, d] = FFN block output before dropout, residual and LayerNorm.
        Pruned (gate 0) heads give zeros in q/k/v/scores/probs. Fields not asked for are None.
        head_gates: None (all ones), a list of per-layer [H_l] tensors (None entries = ones), or a
        [L, max H] tensor (row l sliced to H_l); ffn_gates likewise with I_l. Gates may be soft
        (gradients flow to them); 0 entries are skipped by the fast paths.
        path: "auto" | "triton" | "compact" | "reference", passed to the fused ops.
        active_units: ``model.active_units(head_gates, ffn_gates)`` (the indices of the non-zero gates of
        every layer, found with one host read) for callers that run one structure many times, or a
        compiled model; None finds them in the forward pass (one read when gates are given, none
        without gates).
        Dropout: BERT's hidden dropout (embeddings, after each block's output projection, classifier)
        in train mode; *no* attention-probability dropout (the fused ops have none, distillation
        normally runs with it off).
    Properties: ``num_layers``, ``num_heads`` (list), ``intermediate_sizes`` (list), ``head_dim``,
        ``hidden_size``, ``config`` (TransformerConfig), ``pruned_from`` (Structure relative to the
        original model after ``prune``, else None).
    ``model.structure(head_gates=None, ffn_gates=None)`` -> Structure (all units, or units with gate 1).
    ``model.full_gates(dtype=None, device=None)`` -> (head_gates, ffn_gates) lists of ones.

Config (``config.py``)
    ``TransformerConfig(vocab_size, hidden_size, head_dim, num_heads: list, intermediate_sizes: list,
        family="bert", hidden_act="gelu", ..., num_labels=2, task_type="classification")``;
        ``.num_layers``, ``.to_dict()``, ``.from_dict()``, ``.with_widths(num_heads, intermediate_sizes)``.

Structure (``structure.py``)
    ``Structure(heads, channels, total_heads, total_channels)``: per layer sorted kept head / channel
        indices (tuples) and the layer sizes they index.
    ``Structure.full(model_or_config)``, ``Structure.from_gates(head_gates, ffn_gates)`` (exact 0/1
        only), ``Structure.from_indices(heads, channels, model_or_config)``; ``.to_gates(dtype, device)``,
        ``.num_heads`` / ``.intermediate_sizes`` (kept counts per layer), ``.total_kept_heads``,
        ``.total_kept_channels``, ``.is_full()``, ``.compose(inner)``, ``.to_json()`` /
        ``.from_json()``, ``.save(path)`` / ``.load(path)``, ``.summary()``.

Backbone (``backbone.py``)
    ``MaskedBackbone``: the base of MaskedTransformer and MaskedGPT2 -- the shape properties, ``structure``,
        ``active_units``, ``full_gates`` and ``layer_cuts`` (per layer, which tensors lose which slices:
        Q/K/V rows and output-projection columns by head_dim blocks, FFN up rows and down columns by
        channel).

Pruning (``pruning.py``), for either model
    ``prune(model, structure)``: a new, smaller model of the same class with sliced weights (all
        gates ones) that computes what ``model`` computes with ``structure.to_gates()``. A layer with no
        heads (channels) keeps only that block's output bias + LayerNorm. ``pruned.pruned_from`` is the
        structure relative to the original (composed when pruning twice).

    ``write_back(full, pruned)``: the inverse on the kept units (copies a pruned model's weights into the
        model it was cut from, in place).

Least-squares unit scales (``reconstruct.py``)
    ``tune_unit_scales(pruned, teacher, batches)`` -> TuningReport: one scale per kept head / channel so
        that each sublayer reproduces the teacher's pre-LayerNorm output on calibration tokens, folded
        into the output / down projections (in place).

Parameter counts (``params.py``), "encoder" = transformer layers only (no embeddings, pooler, classifier)
    ``attention_params(hidden, heads, head_dim)``, ``ffn_params(hidden, width)``,
    ``layer_param_counts(model_or_config)`` -> [{"attention", "ffn", "total"}] per layer,
    ``encoder_param_count(model_or_config)``, ``prunable_param_count(model_or_config)``.

Checkpoint families (``adapters/``): "bert", "roberta", "xlm-roberta", "electra" (discriminator; embeddings
    narrower than hidden_size are projected up), "distilbert"; ``register_adapter`` adds one. Other
    model types are refused with one line naming the reason (``adapters.base.REFUSED``) and the
    supported types (``supported_model_types()``; ``refusal(model_type)`` is that tail, None if supported).
    See docs/models.md.

GPT-2 (``gpt2.py``): ``MaskedGPT2.from_pretrained(folder_or_GPT2LMHeadModel)`` -- pre-LN causal decoder with
    the same gates, optional outputs (``.logits`` [B, S, vocab]), Structure and parameter names;
    pruned with ``prune`` (``prune_gpt2`` is the same function); export with ``ddk_fast.export.save_causal_lm``.
"""
from ddk_fast._lazy import lazy_attributes

_WHERE = {
    "MaskedBackbone": "ddk_fast.model.backbone",
    "MaskedTransformer": "ddk_fast.model.masked_transformer",
    "MaskedTransformerOutput": "ddk_fast.model.masked_transformer",
    "TransformerConfig": "ddk_fast.model.config",
    "Structure": "ddk_fast.model.structure",
    "prune": "ddk_fast.model.pruning",
    "write_back": "ddk_fast.model.pruning",
    "tune_unit_scales": "ddk_fast.model.reconstruct",
    "attention_params": "ddk_fast.model.params",
    "ffn_params": "ddk_fast.model.params",
    "layer_param_counts": "ddk_fast.model.params",
    "encoder_param_count": "ddk_fast.model.params",
    "prunable_param_count": "ddk_fast.model.params",
    "register_adapter": "ddk_fast.model.adapters",
    "supported_model_types": "ddk_fast.model.adapters",
    "refusal": "ddk_fast.model.adapters",
    "MaskedGPT2": "ddk_fast.model.gpt2",
    "prune_gpt2": "ddk_fast.model.gpt2",
}

__all__ = sorted(_WHERE)


__getattr__ = lazy_attributes(__name__, _WHERE)
