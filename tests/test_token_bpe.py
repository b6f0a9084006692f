"""Pre-split words through a byte-level BPE tokenizer (RoBERTa / GPT-2 style): it must add a space
before each word, or a word is split as if it began the text. The tokenizer is a small BPE trained
offline on a CoNLL snippet and wrapped in RobertaTokenizerFast."""
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, RobertaConfig, RobertaForTokenClassification, RobertaTokenizerFast

from train_support import packaged_dir

from ddk_fast.data import DataError, encode, load_task
from ddk_fast.data.custom import DataSource, build_task
from ddk_fast.data.encoding import needs_prefix_space
from ddk_fast.ops.label_losses import IGNORE_INDEX
from ddk_fast.runs.hf import load_classifier, load_tokenizer, save_classifier

SNIPPET = """-DOCSTART- -X- -X- O

Kofi NNP B-NP B-PER
Mensah NNP I-NP I-PER
flew VBD B-VP O
to TO B-PP O
Porto NNP B-NP B-LOC
. . O O

Ostrava NNP B-NP B-ORG
Steel NNP I-NP I-ORG
opened VBD B-VP O
an DT B-NP O
office NN I-NP O
in IN B-PP O
Oslo NNP B-NP B-LOC
. . O O
"""
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    """A RoBERTa tokenizer folder: byte-level BPE (no prefix space, as RoBERTa ships) trained on text
    in which the snippet's words follow spaces, so ``Ġword`` pieces exist for them."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    sentences = ["On Monday Kofi Mensah flew to Porto .", "Then Ostrava Steel opened an office in Oslo ."]
    backend.train_from_iterator(sentences * 20, trainer)
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = RobertaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                     sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    folder = tmp_path_factory.mktemp("roberta_tok")
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    path = tmp_path_factory.mktemp("conll") / "ner.conll"
    path.write_text(SNIPPET, encoding="utf-8")
    return build_task(DataSource(str(path), str(path)))


def test_only_byte_level_tokenizers_without_a_prefix_space_are_flagged(bpe_folder):
    raw = AutoTokenizer.from_pretrained(bpe_folder)
    assert needs_prefix_space(raw)
    assert not needs_prefix_space(AutoTokenizer.from_pretrained(bpe_folder, add_prefix_space=True))
    assert not needs_prefix_space(AutoTokenizer.from_pretrained(packaged_dir()))  # WordPiece (BERT)
    # found inside a Sequence of pre-tokenizers too, whatever the wrapper class is called
    wrapped = AutoTokenizer.from_pretrained(bpe_folder)
    wrapped.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    assert needs_prefix_space(wrapped)


def test_token_tasks_get_a_prefix_space_and_sentence_tasks_keep_the_tokenizer(bpe_folder, task):
    assert task.is_token_classification
    assert not needs_prefix_space(load_tokenizer(bpe_folder, task))
    assert needs_prefix_space(load_tokenizer(bpe_folder))  # a sentence task reads running text: unchanged


def test_conll_words_split_as_in_a_sentence_with_tags_on_their_first_piece(bpe_folder, task):
    raw = AutoTokenizer.from_pretrained(bpe_folder)
    tokenizer = load_tokenizer(bpe_folder, task)
    examples = load_task(task, "validation")
    encoded = encode(examples, tokenizer, max_length=64)
    assert len(encoded) == 2
    for i, example in enumerate(examples):
        pieces = tokenizer.convert_ids_to_tokens(encoded.input_ids[i])
        labels = encoded.labels[i]
        assert pieces[0] == "<s>" and pieces[-1] == "</s>" and labels[0] == labels[-1] == IGNORE_INDEX
        position = 1
        for word, tag in zip(example.text_a, example.label):
            in_sentence = raw.tokenize(" " + word)  # the word as the model sees it after a space
            assert in_sentence[0].startswith("Ġ")
            assert pieces[position:position + len(in_sentence)] == in_sentence
            assert labels[position:position + len(in_sentence)] == [tag] + [IGNORE_INDEX] * (len(in_sentence) - 1)
            position += len(in_sentence)
        assert position == len(pieces) - 1
    assert any(len(raw.tokenize(" " + w)) > 1 for ex in examples for w in ex.text_a), "no word split in pieces"
    # without the prefix space the first word is split differently: refused, not silently misaligned
    assert raw.tokenize("Kofi") != raw.tokenize(" Kofi")
    with pytest.raises(DataError, match="add_prefix_space=True"):
        encode(examples, raw, max_length=64)


def test_a_roberta_classifier_loads_for_words_and_keeps_the_setting_when_saved(bpe_folder, task, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(bpe_folder)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40, pad_token_id=1,
                           num_labels=task.num_labels)
    torch.manual_seed(0)
    folder = tmp_path / "roberta"
    RobertaForTokenClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model, loaded = load_classifier(str(folder), task)
    assert not needs_prefix_space(loaded)
    save_classifier(model, loaded, str(tmp_path / "saved"))
    assert not needs_prefix_space(AutoTokenizer.from_pretrained(tmp_path / "saved"))


def test_a_plain_fast_tokenizer_gets_the_prefix_space_in_its_backend(bpe_folder, task, tmp_path):
    """A folder holding only tokenizer.json loads as PreTrainedTokenizerFast, which ignores the
    add_prefix_space keyword; the byte-level step of its backend is set instead."""
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=AutoTokenizer.from_pretrained(bpe_folder).backend_tokenizer,
                                    pad_token="<pad>", unk_token="<unk>")
    folder = tmp_path / "plain"
    plain.save_pretrained(folder)
    reloaded = AutoTokenizer.from_pretrained(folder, add_prefix_space=True)
    assert needs_prefix_space(reloaded)  # the keyword alone does not take
    fixed = load_tokenizer(str(folder), task)
    assert not needs_prefix_space(fixed)
    sentence = fixed("Porto Oslo", add_special_tokens=False)["input_ids"]
    words = fixed(["Porto", "Oslo"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert words == sentence  # each word split as it is after a space inside a sentence
