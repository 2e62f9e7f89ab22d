from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder beside the repository (`../shared`): reference fixtures and real data."""
    if not SHARED_DIR.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    """The DN-PIQA checkpoint-compatibility fixture."""
    return shared_dir / "fixtures" / "dnpiqa-reference"


@pytest.fixture(scope="session")
def portrait_paths(shared_dir: Path) -> dict[str, list[Path]]:
    """A few real portraits: London Set (1350x1350) and Congress headshots (225x275)."""
    portraits = shared_dir / "data" / "portraits"
    return {
        "london": sorted((portraits / "london").glob("*.jpg"))[:3],
        "congress": sorted((portraits / "congress").glob("*.jpg"))[:3],
    }
