"""What the wheel holds beyond the code (the rest of the packaging is in pyproject.toml).

The checkout keeps ``migrations/`` and ``models/`` at its top; a wheel carries them inside
the package, as ``cad_node/migrations`` and ``cad_node/models`` (only the default model's
folder), where :mod:`cad_node.shipped` finds them. An editable install reads the checkout's.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
SHIPPED = {
    "cad_node.migrations": "migrations",
    "cad_node.migrations.versions": "migrations/versions",
    "cad_node.models": "models",
}
pointer = HERE / "models" / "DEFAULT"
default_model = pointer.read_text().strip() if pointer.is_file() else None

setup(
    packages=[*find_packages(include=["cad_node", "cad_node.*"]), *SHIPPED],
    package_dir=SHIPPED,
    package_data={
        "cad_node": ["py.typed", "web/templates/*.html", "web/templates/*.css"],
        "cad_node.migrations": ["script.py.mako"],
        "cad_node.models": ["DEFAULT", f"{default_model}/*"] if default_model else [],
    },
)
