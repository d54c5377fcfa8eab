"""Where the lab's Kafka, Connect and MirrorMaker 2 jars come from.

`KAFKA_HOME` (an unpacked Apache Kafka) wins; otherwise Maven resolves the pinned
pom beside this file into `$BATON_HOME/jars/<kafka version>/` (Maven's ~/.m2 keeps
a cache between runs, so a second resolve does not download).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from baton.errors import LabError

POM = Path(__file__).with_name("pom.xml")


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    assert match, "pom.xml must pin kafka.version"
    return match.group(1)


def classpath(home: Path, progress=print) -> str:
    """A Java classpath holding Kafka, Connect and MM2."""
    kafka_home = os.environ.get("KAFKA_HOME")
    if kafka_home:
        libs = Path(kafka_home) / "libs"
        if not any(libs.glob("connect-mirror-*.jar")):
            raise LabError(
                f"KAFKA_HOME={kafka_home} has no libs/connect-mirror-*.jar; point it at an "
                "unpacked Apache Kafka 4.x release or unset it to use Maven"
            )
        return f"{libs}/*"
    target = home / "jars" / kafka_version()
    if not (target / ".complete").exists():
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LabError("Maven (mvn) is not on PATH and KAFKA_HOME is not set; install one")
        progress(f"resolving Apache Kafka {kafka_version()} jars with Maven into {target}")
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={target}"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise LabError(f"Maven could not resolve the lab jars:\n{result.stdout[-3000:]}")
        (target / ".complete").write_text(kafka_version())
    return f"{target}/*"
