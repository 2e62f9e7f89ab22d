"""Write the demo's visibly bad portraits: sample photos degraded by the project's own generator.

python -m training.samples      # (re)writes samples/portraits/degraded_*.jpg; `make demo-samples`
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from training.degrade import degrade_photo

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "portraits"
# (source photo, kind, form, strength): one clearly bad photo per common fault.
DEGRADED = (
    ("london_005_03.jpg", "blur", "gaussian", 0.9),
    ("congress_D000616.jpg", "underexposure", "gain", 0.8),
    ("congress_G000558.jpg", "noise", "white", 0.8),
    ("london_010_03.jpg", "jpeg", "jpeg", 1.0),
)


def main() -> None:
    for source, kind, form, strength in DEGRADED:
        with Image.open(SAMPLES / source) as photo:
            image = degrade_photo(photo.convert("RGB"), kind, form, strength)
        target = SAMPLES / f"degraded_{kind}_{source}"
        image.save(target, quality=92)
        print(f"wrote {target.relative_to(SAMPLES.parents[1])}")


if __name__ == "__main__":
    main()
