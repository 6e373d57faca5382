"""Ready prompt ensembles for flagging unsafe content: `nsfw` and `violence`.

A preset is a zero-shot detector built from two prompt ensembles: prompts that describe
the content to flag, and contrast prompts that describe ordinary, safe images. An image's
preset score is

    best flag-prompt cosine  -  best contrast-prompt cosine

and the image is flagged when that score is at least the preset's threshold. With the
default threshold 0.0 this is plain zero-shot classification between the two ensembles
("is the image closer to any flag prompt than to every contrast prompt?").

Read this before relying on it:
    - These are zero-shot prompts, not a trained safety classifier. They inherit CLIP's
      blind spots and biases; expect false positives (swimwear, medical images, boxing,
      paintings) and false negatives. Use them to sort material for human review, not as
      the only safeguard.
    - The default thresholds were not tuned on labelled unsafe data: this repository holds
      none. Calibrate on a few dozen of your own labelled examples with
      `clipsift filter ... --preset nsfw --calibrate EXAMPLES_DIR` (EXAMPLES_DIR/positive:
      images to keep, EXAMPLES_DIR/negative: images to flag) and pass the threshold it
      reports as `--preset nsfw@T`. Scores depend on the model: recalibrate per model.
    - The prompt wording is deliberately clinical and non-graphic.

Example:
    >>> p = get_preset("nsfw")
    >>> p.threshold, len(p.flag) > 3
    (0.0, True)
"""

from __future__ import annotations

from dataclasses import dataclass

from clipsift.errors import UsageError


@dataclass(frozen=True)
class Preset:
    """A named zero-shot detector: flag prompts, contrast prompts and a default threshold.

    Attributes:
        name: the preset name used on the command line (`--preset NAME`).
        description: one line on what it flags.
        flag: prompts describing the content to flag.
        contrast: prompts describing ordinary images it should not flag.
        threshold: default threshold on (best flag cosine - best contrast cosine).
    """

    name: str
    description: str
    flag: tuple[str, ...]
    contrast: tuple[str, ...]
    threshold: float = 0.0

    @property
    def prompts(self) -> tuple[str, ...]:
        """All prompts, flag prompts first (the order of the manifest's preset columns)."""
        return self.flag + self.contrast


_EVERYDAY = (
    "a photo of people wearing everyday clothes",
    "a portrait photo of a fully clothed person",
    "a photo of a landscape",
    "a photo of an animal",
    "a photo of food on a table",
    "a photo of a building or a street",
    "a photo of an everyday object",
)

PRESETS: dict[str, Preset] = {
    "nsfw": Preset(
        name="nsfw",
        description="sexual content and nudity (zero-shot; tune the threshold)",
        flag=(
            "a photo containing nudity",
            "an explicit image of an unclothed person",
            "sexually explicit adult content",
            "a pornographic image",
            "an image of a sexual act",
        ),
        contrast=(*_EVERYDAY, "a photo of a person in swimwear at the beach"),
    ),
    "violence": Preset(
        name="violence",
        description="graphic violence and injury (zero-shot; tune the threshold)",
        flag=(
            "a photo of a violent assault",
            "a photo of a person with a bleeding injury",
            "an image of a shooting or a stabbing",
            "a photo of a dead body",
            "a photo of a violent fight between people",
        ),
        contrast=(
            *_EVERYDAY,
            "a photo of a sports match",
            "a photo of a toy or a historical weapon in a museum",
        ),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called `name`.

    Raises:
        UsageError: unknown name; the message lists the known presets.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(
            f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None
