"""The one table of dataset sources `maebench data get` knows: where each archive lives, how big it is, its
published checksum and where that checksum comes from, its licence, and the layout it unpacks to.

Checksums are never made up here: each names its source (`checksum_from`). Where no stable checksum exists (a
GitHub branch archive is rebuilt on demand and is not byte-stable; the SUPERB KS1 test-set tarball has no
published sum), the row has none and the unpacked layout is verified instead (`expect`: a glob and its exact file
count, then `maebench data check`). Restricted datasets (VoxCeleb1, IEMOCAP, AudioSet) have no archives: their row
says what to request where; the user's own archive comes in with `--from FILE`.
"""

from __future__ import annotations

from dataclasses import dataclass

from maebench.zenodo import listing_url

TORCHAUDIO = "torchaudio datasets (speechcommands.py / librispeech.py _CHECKSUMS, sha256)"
TFDS = "TensorFlow Datasets url_checksums (url size sha256)"
NO_CHECKSUM = "none published: layout and file count verified instead"


@dataclass(frozen=True)
class Archive:
    """One file to fetch. Its contents (or its folder `inner`, '' = the whole archive) become ROOT/`dest`."""

    url: str
    dest: str
    inner: str = ""
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    checksum_from: str = NO_CHECKSUM
    expect: tuple[str, int] | None = None  # (glob under dest, exact number of files) checked after unpacking
    listing: str | None = None  # a Zenodo file listing publishing this file's md5 and size (read before fetching)

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Source:
    """A `data get` target: its archives, what `data check --task` must accept and where (`data`, under ROOT)."""

    name: str
    title: str
    licence: str
    layout: str
    archives: tuple[Archive, ...] = ()
    check_task: str | None = None  # the `maebench data check --task` the result must pass (None: corpus only)
    data: str = ""  # the folder under ROOT to pass as --data
    request: str = ""  # for restricted data: what to request where
    next_step: str = ""  # the command to run afterwards ({data} = the resulting folder)

    @property
    def restricted(self) -> bool:
        return not self.archives

    @property
    def total_size(self) -> int | None:
        sizes = [a.size for a in self.archives]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]


TF_DATA = "http://download.tensorflow.org/data"
OPENSLR = "http://www.openslr.org/resources/12"
EVAL_LINE = "maebench eval --task {task} --data {data} --upstream PATH|PRESET --probe logreg"

# sha256 and sizes from TensorFlow Datasets' url_checksums/librispeech.txt (sha256 also in torchaudio's table)
_LIBRISPEECH = {
    "dev-clean": (337926286, "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3"),
    "dev-other": (314305928, "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365"),
    "test-clean": (346663984, "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23"),
    "test-other": (328757843, "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29"),
    "train-clean-100": (6387309499, "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2"),
    "train-clean-360": (23049477885, "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf"),
    "train-other-500": (30593501606, "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2"),
}


def _librispeech(subset: str) -> Source:
    size, sha256 = _LIBRISPEECH[subset]
    folder = f"LibriSpeech/{subset}"
    return Source(
        name=f"librispeech-{subset}", title=f"LibriSpeech {subset} (pretraining corpus)", licence="CC BY 4.0",
        layout=f"ROOT/{folder}/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac",
        archives=(Archive(f"{OPENSLR}/{subset}.tar.gz", folder, inner=folder, size=size, sha256=sha256,
                          checksum_from=f"{TFDS}; {TORCHAUDIO}"),),
        data=folder, next_step="maebench data manifest {data} -o train.tsv",
    )


SOURCES: dict[str, Source] = {
    "esc50": Source(
        name="esc50", title="ESC-50 (environmental sounds, 2,000 clips)", licence="CC BY-NC 3.0",
        layout="ROOT/ESC-50-master/{audio/*.wav, meta/esc50.csv}",
        archives=(Archive("https://github.com/karolpiczak/ESC-50/archive/master.zip", "ESC-50-master",
                          inner="ESC-50-master", expect=("audio/*.wav", 2000)),),
        check_task="esc50", data="ESC-50-master", next_step=EVAL_LINE,
    ),
    "ks2": Source(
        name="ks2", title="Speech Commands v0.02 (KS2, 35 words)", licence="CC BY 4.0",
        layout="ROOT/speech_commands_v0.02/{<word>/*.wav, _background_noise_/, validation_list.txt, "
               "testing_list.txt}",
        archives=(Archive(f"{TF_DATA}/speech_commands_v0.02.tar.gz", "speech_commands_v0.02", size=2428923189,
                          sha256="af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
                          checksum_from=f"{TFDS}; {TORCHAUDIO}"),),
        check_task="ks2", data="speech_commands_v0.02", next_step=EVAL_LINE,
    ),
    "ks1": Source(
        name="ks1", title="Speech Commands v0.01 + SUPERB's KS1 test set", licence="CC BY 4.0",
        layout="ROOT/speech_commands_v0.01/ and ROOT/speech_commands_test_set_v0.01/ (12 class folders)",
        archives=(
            Archive(f"{TF_DATA}/speech_commands_v0.01.tar.gz", "speech_commands_v0.01",
                    sha256="743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
                    checksum_from=TORCHAUDIO),
            Archive(f"{TF_DATA}/speech_commands_test_set_v0.01.tar.gz", "speech_commands_test_set_v0.01",
                    expect=("*/*.wav", 3081)),
        ),
        check_task="ks1", data="", next_step=EVAL_LINE,
    ),
    **{f"librispeech-{subset}": _librispeech(subset) for subset in _LIBRISPEECH},
    "sid": Source(
        name="sid", title="VoxCeleb1 (speaker identification)", licence="CC BY-SA 4.0 (request access)",
        layout="ROOT/VoxCeleb1/{dev,test}/wav/idXXXXX/<youtube id>/<nnnnn>.wav and ROOT/VoxCeleb1/iden_split.txt",
        request="request access at https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html, download "
                "vox1_dev_wav and vox1_test_wav and iden_split.txt, arrange dev/wav/, test/wav/ and iden_split.txt "
                "in one folder, pack it (tar or zip), then: maebench data get sid --from THAT_ARCHIVE",
        check_task="sid", data="VoxCeleb1", next_step=EVAL_LINE,
    ),
    "er": Source(
        name="er", title="IEMOCAP (emotion recognition)", licence="USC SAIL licence (request access)",
        layout="ROOT/IEMOCAP/Session{1..5}/{sentences/wav/<dialog>/<utt>.wav, dialog/EmoEvaluation/*.txt}",
        request="fill in the release form at https://sail.usc.edu/iemocap/iemocap_release.htm; the link you get "
                "serves IEMOCAP_full_release.tar.gz: maebench data get er --from IEMOCAP_full_release.tar.gz",
        check_task="er", data="IEMOCAP", next_step=EVAL_LINE,
    ),
    "as20k": Source(
        name="as20k", title="AudioSet balanced (AS-20K)", licence="CC BY 4.0 labels; audio is YouTube's",
        layout="ROOT/AudioSet/{*.json (AST format: {'data': [{'wav', 'labels'}]}), class_labels_indices.csv, audio}",
        request="AudioSet ships only YouTube ids (https://research.google.com/audioset/download.html): fetch the "
                "clips yourself (e.g. a yt-dlp script), write AST-style json lists and class_labels_indices.csv, "
                "pack the folder and run: maebench data get as20k --from THAT_ARCHIVE",
        check_task="as20k", data="AudioSet", next_step=EVAL_LINE,
    ),
}

HEAR_PREFIX = "hear:"
ZENODO = "https://zenodo.org"
HEAR_RECORD = "6332517"  # HEAR 2021 tasks at 48 kHz, a pinned version (concept DOI 10.5281/zenodo.5802571 moves on)
HEAR_SUMS = f"Zenodo record {HEAR_RECORD}'s file listing (md5 and size, read before downloading)"
# task -> its tarball in the record; each unpacks to tasks/<name without hear2021- and -48000.tar.gz>/
HEAR_ARCHIVES = {
    "beehive_states_fold0": "hear2021-beehive_states_fold0-v2-full-48000.tar.gz",
    "beehive_states_fold1": "hear2021-beehive_states_fold1-v2-full-48000.tar.gz",
    "beijing_opera": "hear2021-beijing_opera-v1.0-hear2021-full-48000.tar.gz",
    "crema_d": "hear2021-tfds_crema_d-1.0.0-full-48000.tar.gz",
    "dcase2016_task2": "hear2021-dcase2016_task2-hear2021-full-48000.tar.gz",
    "esc50": "hear2021-esc50-v2.0.0-full-48000.tar.gz",
    "fsd50k": "hear2021-fsd50k-v1.0-full-48000.tar.gz",
    "gtzan_genre": "hear2021-tfds_gtzan-1.0.0-full-48000.tar.gz",
    "libricount": "hear2021-libricount-v1.0.0-hear2021-full-48000.tar.gz",
    "mridangam_stroke": "hear2021-mridangam_stroke-v1.5-full-48000.tar.gz",
    "mridangam_tonic": "hear2021-mridangam_tonic-v1.5-full-48000.tar.gz",
    "nsynth_pitch_50h": "hear2021-nsynth_pitch-v2.2.3-50h-48000.tar.gz",
    "speech_commands": "hear2021-speech_commands-v0.0.2-full-48000.tar.gz",
    "vocal_imitation": "hear2021-vocal_imitation-v1.1.3-full-48000.tar.gz",
}
HEAR_LAYOUT = "ROOT/<task>-<version>-full/{task_metadata.json, labelvocabulary.csv, <split>.json, 48000/<split>/}"
HEAR_REQUEST = (f"HEAR 2021 tasks maebench downloads: {', '.join(sorted(HEAR_ARCHIVES))} (hear:NAME). For another "
                f"task, download its tarball from {ZENODO}/records/{HEAR_RECORD} (other sample rates: "
                "gs://hear2021-archive/tasks/, requester pays), then: maebench data get hear:NAME --from THAT_TARBALL")


def hear_source(name: str) -> Source:
    """`hear:NAME`: a HEAR 2021 task tarball from Zenodo (NAME in HEAR_ARCHIVES) or one the user fetched; its task
    folder (the one holding task_metadata.json) lands in ROOT and must pass `data check --task hear:FOLDER`."""
    task = name[len(HEAR_PREFIX):] or "NAME"
    licence = f"per dataset: LICENSE.txt of Zenodo record {HEAR_RECORD}"
    key = HEAR_ARCHIVES.get(task)
    if key is None:
        return Source(name=name, title=f"HEAR 2021 task {task}", licence=licence, layout=HEAR_LAYOUT,
                      request=HEAR_REQUEST, check_task="hear:", data="", next_step=EVAL_LINE)
    folder = key.removeprefix("hear2021-").removesuffix("-48000.tar.gz")
    archive = Archive(f"{ZENODO}/records/{HEAR_RECORD}/files/{key}", folder, checksum_from=HEAR_SUMS,
                      listing=listing_url(ZENODO, HEAR_RECORD))
    return Source(name=name, title=f"HEAR 2021 task {task}", licence=licence, layout=HEAR_LAYOUT,
                  archives=(archive,), check_task="hear:", data=folder, next_step=EVAL_LINE)


def find_source(name: str) -> Source:
    from maebench.errors import MaebenchError

    if name.startswith(HEAR_PREFIX):
        return hear_source(name)
    if name not in SOURCES:
        raise MaebenchError(f"unknown dataset {name!r} for data get; choose one of {', '.join(source_names())}")
    return SOURCES[name]


def source_names() -> list[str]:
    return [*SOURCES, "hear:NAME"]
