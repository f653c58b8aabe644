"""Long-form CTC transcription: windows that tile the recording, merging that loses and
duplicates nothing at window boundaries, word and segment times against known answers, the
output formats read back by real parsers, the energy VAD's regions, and a resumable
transcription job over a manifest with bad files in it.

The known answers come from a frame-local stand-in recognizer (`ToneCTC`): each letter is a
tone whose frequency names it, and the stand-in emits, per encoder frame, the letter of the
loudest mel band (blank where it is quiet). Its best path over a window is exactly the full
recording's over the same frames, so chunked decoding must give the one-window answer token
for token, wherever the windows cut, and the times are where the tones were placed.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import soundfile as sf
import srt
import webvtt

from jaxseq.api import Model
from jaxseq.audio.vad import speech_regions
from jaxseq.config import load_config
from jaxseq.errors import JaxseqError
from jaxseq.inference.formats import FORMATS, render, write_result
from jaxseq.inference.transcribe import transcribe_waveforms
from jaxseq.inference.windows import plan_windows
from jaxseq.parallel.mesh import make_mesh
from jaxseq.tasks.ctc import CTCTask
from jaxseq.text.vocab import CharVocab
from jaxseq.train.trained import Trained
from tests.conftest import TINY_CONFIG

RATE = 16000
LETTERS = "abcdefg "  # a tone per letter; " " (the space) is a tone too
BAND = 9  # mel bins per letter: bins 9k..9k+8 mean LETTERS[k - 1]
LETTER_SECONDS, PAUSE_SECONDS = 0.12, 0.8


@pytest.mark.parametrize(
    ("samples", "chunk", "stride"), [(1, 10, 2), (10, 10, 2), (11, 10, 2), (97, 10, 3), (50, 7, 0)]
)
def test_the_kept_parts_of_the_windows_tile_the_recording(samples, chunk, stride):
    windows = plan_windows(samples, chunk, stride)
    kept = [(w.start + w.left, w.end - w.right) for w in windows]
    assert kept[0][0] == 0 and kept[-1][1] == samples
    assert all(a[1] == b[0] for a, b in zip(kept, kept[1:], strict=False))  # no gap, no overlap
    for w in windows:
        assert w.end - w.start <= chunk and w.left in (0, stride) and w.right in (0, stride)
    if samples <= chunk:
        assert windows == [(0, samples, 0, 0)]


def test_strides_that_leave_no_middle_are_an_error():
    with pytest.raises(JaxseqError, match="stride_seconds"):
        plan_windows(100, 10, 5)


class ToneCTC(CTCTask):
    """Frame-local stand-in: an encoder frame (every 4th feature frame, as the conv stem's
    strides 2 x 2 give) is the letter of its loudest mel band, or blank where it is quiet."""

    def predict_fn(self, params, batch, decoder, beam_size):
        del params, beam_size
        frames = batch["features"][:, ::4]  # [batch, enc_frames, n_mels]
        lengths = (batch["feature_lengths"] + 3) // 4
        band = jnp.argmax(frames, axis=-1) // BAND  # 1.. len(LETTERS)
        chars = jnp.asarray(self.letter_ids)[jnp.clip(band - 1, 0, len(LETTERS) - 1)]
        ids = jnp.where(jnp.max(frames, axis=-1) > 0.0, chars, self.tokenizer.blank_id)
        if decoder == "greedy":
            return ids, jnp.zeros(ids.shape, jnp.float32), lengths
        return jnp.log(jax_one_hot(ids, self.tokenizer.size) * 0.98 + 0.01), lengths


def jax_one_hot(ids, size):
    return (ids[..., None] == jnp.arange(size)).astype(jnp.float32)


@pytest.fixture(scope="module")
def trained() -> Trained:
    cfg = load_config(TINY_CONFIG, ["data.buckets=[200]"])  # windows of 2 s, strides of 1/3 s
    vocab = CharVocab.from_charset("abcdefghijklmnopqrstuvwxyz' ")
    task = ToneCTC(cfg, vocab, 80)
    task.letter_ids = [int(vocab.encode(c)[0]) for c in LETTERS]
    return Trained(cfg, task, make_mesh(cfg.mesh), {}, 0, cfg.prepare.frontend, cfg.prepare.text)


def tone_recording(sentences: list[str], seed: int) -> tuple[np.ndarray, list[dict]]:
    """Sentences of tone letters, PAUSE_SECONDS of silence around each (jittered): the
    waveform and the true words [{"word", "start", "end", "sentence"}]."""
    freqs = librosa.mel_frequencies(82, fmax=RATE / 2)
    rng = np.random.default_rng(seed)
    parts, words, t = [], [], 0
    for n, sentence in enumerate(sentences):
        gap = int((PAUSE_SECONDS + rng.uniform(0, 0.3)) * RATE)
        parts.append(np.zeros(gap, np.float32))
        t += gap
        for word in sentence.split(" "):
            start = t
            for letter in word + " ":
                k = LETTERS.index(letter) + 1
                steps = np.arange(int(LETTER_SECONDS * RATE)) / RATE
                centre = freqs[BAND * k + 5]  # of mel bin BAND * k + 4
                parts.append(0.5 * np.sin(2 * np.pi * centre * steps))
                t += len(steps)
            end = t - int(LETTER_SECONDS * RATE)  # the space tone is not the word's
            words.append({"word": word, "start": start / RATE, "end": end / RATE, "sentence": n})
        parts[-1] = np.zeros_like(parts[-1])  # no space tone after a sentence's last word
    parts.append(np.zeros(int(PAUSE_SECONDS * RATE), np.float32))
    return np.concatenate(parts).astype(np.float32), words


# No letter twice in a row: CTC merges repeats that no blank separates.
SENTENCES = ["bad cafe", "dab ace fed", "cab", "face bead deaf gab", "bag egad"]


@pytest.mark.parametrize("stride", [0.24, 0.0])
def test_chunked_decoding_equals_one_window_wherever_the_windows_cut(trained, stride):
    wave, truth = tone_recording(SENTENCES * 3, seed=0)
    assert len(wave) / RATE > 10 * 2.0  # many windows of 2 s
    (whole,) = transcribe_waveforms(
        trained, [wave], return_timestamps="word", chunk_seconds=len(wave) / RATE + 1
    )
    (chunked,) = transcribe_waveforms(
        trained, [wave], return_timestamps="word", stride_seconds=stride
    )
    assert chunked == whole
    words = [w for s in chunked["segments"] for w in s["words"]]
    assert [w["word"].strip() for w in words] == [w["word"] for w in truth]  # none lost, none twice
    assert chunked["text"] == " ".join(SENTENCES * 3)
    for got, want in zip(words, truth, strict=True):  # within an encoder frame and a half
        assert abs(got["start"] - want["start"]) <= 0.06, (got, want)
        assert abs(got["end"] - want["end"]) <= 0.06, (got, want)
    # A segment per sentence: starts where its first word starts.
    starts = [min(w["start"] for w in truth if w["sentence"] == n) for n in range(15)]
    assert [s["start"] for s in chunked["segments"]] == pytest.approx(starts, abs=0.06)


def test_vad_decodes_the_speech_regions_alone_with_the_same_words(trained):
    wave, truth = tone_recording(SENTENCES, seed=1)
    (plain,) = transcribe_waveforms(trained, [wave], return_timestamps="word")
    (regions,) = transcribe_waveforms(trained, [wave], return_timestamps="word", vad=True)
    assert regions["text"] == plain["text"] == " ".join(SENTENCES)
    got = [w["start"] for s in regions["segments"] for w in s["words"]]
    assert got == pytest.approx([w["start"] for w in truth], abs=0.06)


def test_prefix_beam_decodes_the_merged_windows_and_timestamps_need_greedy(trained):
    wave, _ = tone_recording(SENTENCES, seed=2)
    options = {"decoder": "prefix_beam", "beam_size": 2}
    (text,) = transcribe_waveforms(trained, [wave], **options, vad=True)
    assert text == " ".join(SENTENCES)  # a region per sentence
    # Without the regions nothing marks the pauses: the stand-in, like a model trained on
    # single utterances, emits no space between two sentences (greedy splits at the pauses).
    (text,) = transcribe_waveforms(trained, [wave], **options)
    assert text.replace(" ", "") == "".join(SENTENCES).replace(" ", "")
    with pytest.raises(JaxseqError, match="decoder=greedy"):
        transcribe_waveforms(trained, [wave], decoder="prefix_beam", return_timestamps=True)


def test_speech_regions_are_the_bursts_padded():
    rng = np.random.default_rng(0)
    wave = np.zeros(10 * RATE, np.float32)
    bursts = [(1.0, 2.5), (2.7, 3.0), (5.0, 7.2)]  # the first two: a pause of 0.2 s, bridged
    for a, b in bursts:
        start, end = round(a * RATE), round(b * RATE)
        wave[start:end] = rng.normal(0, 0.3, end - start)
    got = np.array(speech_regions(wave, RATE)) / RATE
    np.testing.assert_allclose(got, [[0.9, 3.1], [4.9, 7.3]], atol=0.03)
    assert speech_regions(np.zeros(RATE, np.float32), RATE) == []


RESULT = {
    "text": "ab cd ef",
    "language": None,
    "segments": [
        {"id": 0, "start": 0.5, "end": 1.25, "text": "ab cd", "words": []},
        {"id": 1, "start": 3661.007, "end": 3662.5, "text": "ef", "words": []},
    ],
}


def test_srt_vtt_tsv_json_and_txt_parse_back(tmp_path):
    paths = write_result(RESULT, tmp_path, "rec", list(FORMATS))
    assert [p.name for p in paths] == [f"rec.{f}" for f in FORMATS]
    cues = list(srt.parse((tmp_path / "rec.srt").read_text()))
    assert [(c.index, c.content) for c in cues] == [(1, "ab cd"), (2, "ef")]
    assert [c.start.total_seconds() for c in cues] == [0.5, 3661.007]
    assert [c.end.total_seconds() for c in cues] == [1.25, 3662.5]
    captions = webvtt.read(str(tmp_path / "rec.vtt"))
    assert [(c.start, c.end, c.text) for c in captions] == [
        ("00:00:00.500", "00:00:01.250", "ab cd"),
        ("01:01:01.007", "01:01:02.500", "ef"),
    ]
    assert json.loads((tmp_path / "rec.json").read_text()) == RESULT
    assert render(RESULT, "tsv").splitlines() == [
        "start\tend\ttext",
        "500\t1250\tab cd",
        "3661007\t3662500\tef",
    ]
    assert render(RESULT, "txt") == "ab cd\nef\n"


@pytest.fixture(scope="module")
def tone_manifest(tmp_path_factory) -> tuple:
    """A manifest of tone recordings (with and without references), a corrupt file and a
    missing one: (manifest path, {id: reference or None})."""
    folder = tmp_path_factory.mktemp("tones")
    lines, refs = [], {}
    for i in range(9):
        sentences = [SENTENCES[i % 5], SENTENCES[(i + 2) % 5]]
        wave, _ = tone_recording(sentences, seed=10 + i)
        sf.write(folder / f"r{i}.wav", wave, RATE)
        line = {"id": f"r{i}", "audio": f"r{i}.wav"}
        if i % 3:  # some items have no transcript: transcribed, not scored
            line["text"] = " ".join(sentences)
        refs[f"r{i}"] = line.get("text")
        lines.append(line)
    (folder / "bad.wav").write_bytes(b"RIFF\x00\x00not audio")
    lines.insert(4, {"id": "bad", "audio": "bad.wav", "text": "a"})
    lines.append({"id": "gone", "audio": "missing.wav"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest, refs


def test_a_manifest_job_lists_bad_files_scores_what_has_text_and_resumes(
    trained, tone_manifest, tmp_path
):
    manifest, refs = tone_manifest
    model = Model(trained, tmp_path)
    report = model.transcribe_manifest(
        manifest, tmp_path / "job", batch_size=2, vad=True, return_timestamps="word"
    )
    straight = (tmp_path / "job" / "results.jsonl").read_bytes()
    rows = [json.loads(line) for line in straight.decode().splitlines()]
    assert [r["id"] for r in rows] == [
        json.loads(line)["id"] for line in manifest.read_text().splitlines()
    ]  # every item, in manifest order
    errors = {r["id"]: r["error"] for r in rows if "error" in r}
    assert list(errors) == ["bad", "gone"]  # listed with their reasons; the job went on
    assert "bad.wav" in errors["bad"] and "missing.wav" in errors["gone"]
    assert errors["gone"].startswith("audio file not found")
    for r in rows:
        if r["id"] in errors:
            continue
        i = int(r["id"][1:])
        assert r["text"] == f"{SENTENCES[i % 5]} {SENTENCES[(i + 2) % 5]}"
        assert r.get("ref") == refs[r["id"]] and r["segments"][0]["words"]
    assert report["num_items"] == 11 and report["num_skipped"] == 2
    assert report["num_scored"] == 6 and report["wer"] == 0.0 and report["normalizer"] == "model"
    assert [s["id"] for s in report["skipped"]] == ["bad", "gone"]
    assert report["audio_seconds"] == pytest.approx(sum(r.get("seconds", 0) for r in rows))

    # Killed while writing its third group: two groups' lines and a torn one are on disk.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    cut = straight.split(b"\n")
    (resumed / "results.jsonl").write_bytes(b"\n".join(cut[:4]) + b"\n" + cut[4][:30])
    again = model.transcribe_manifest(
        manifest, resumed, batch_size=2, vad=True, return_timestamps="word"
    )
    assert (resumed / "results.jsonl").read_bytes() == straight
    assert again["new_items"] == 7 and again["wer"] == report["wer"]
    assert model.transcribe_manifest(manifest, resumed, batch_size=2)["new_items"] == 0
    assert (resumed / "results.jsonl").read_bytes() == straight
