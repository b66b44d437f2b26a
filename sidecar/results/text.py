"""Render an SR document's content tree as indented text (for the demo and for logs-free review)."""

from __future__ import annotations

from pydicom import Dataset


def _concept(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeMeaning) if seq else "(unnamed)"


def _value(item: Dataset) -> str:
    vt = str(item.get("ValueType", ""))
    if vt == "TEXT":
        return str(item.get("TextValue", ""))
    if vt == "CODE":
        seq = item.get("ConceptCodeSequence")
        return str(seq[0].CodeMeaning) if seq else ""
    if vt == "NUM":
        seq = item.get("MeasuredValueSequence")
        if not seq:
            return "(no value)"
        mv = seq[0]
        unit = mv.MeasurementUnitsCodeSequence[0].CodeValue if mv.get("MeasurementUnitsCodeSequence") else ""
        return f"{mv.NumericValue} {unit if unit != '1' else ''}".strip()
    if vt in ("UIDREF",):
        return str(item.get("UID", ""))
    if vt == "IMAGE":
        seq = item.get("ReferencedSOPSequence")
        return f"image {seq[0].ReferencedSOPInstanceUID}" if seq else "image"
    if vt in ("SCOORD", "SCOORD3D"):
        return f"{item.get('GraphicType', '')} {list(item.get('GraphicData', []))}"
    if vt == "PNAME":
        return "(person name)"
    if vt == "CONTAINER":
        return ""
    return vt


def render_sr_text(ds: Dataset, max_lines: int = 200) -> str:
    """The document title and its content items, one per line, indented by depth."""
    lines = [f"{_concept(ds)}  [{ds.get('SeriesDescription', '')}]"]

    def walk(items: list[Dataset], depth: int) -> None:
        for item in items:
            if len(lines) >= max_lines:
                return
            value = _value(item)
            lines.append(f"{'  ' * depth}{_concept(item)}{': ' + value if value else ''}")
            if "ContentSequence" in item:
                walk(list(item.ContentSequence), depth + 1)

    walk(list(ds.get("ContentSequence", [])), 1)
    if len(lines) >= max_lines:
        lines.append("  ...")
    return "\n".join(lines)


_CONTEXT_CODES = {"Finding", "Finding Site", "Algorithm Family", "Laterality", "Tracking Identifier"}


def summarize_sr(ds: Dataset) -> list[str]:
    """One line per measurement group: what was evaluated, its value, and the numbers beside it."""
    out: list[str] = []

    def groups(items: list[Dataset]) -> list[Dataset]:
        found = []
        for item in items:
            if _concept(item) in ("Measurement Group", "Planar ROI Measurements"):
                found.append(item)
            elif "ContentSequence" in item:
                found.extend(groups(list(item.ContentSequence)))
        return found

    for group in groups(list(ds.get("ContentSequence", []))):
        name, values, numbers = "", [], []
        for item in group.get("ContentSequence", []):
            concept, vt = _concept(item), str(item.get("ValueType", ""))
            if concept == "Tracking Identifier":
                name = _value(item)
            elif vt == "CODE" and concept not in _CONTEXT_CODES:
                values.append(f"{concept} = {_value(item)}")
            elif vt == "NUM":
                try:
                    numbers.append(f"{concept} {float(_value(item).split()[0]):.3f}")
                except ValueError:
                    numbers.append(f"{concept} {_value(item)}")
        out.append(f"{name or 'group'}: {'; '.join(values) or '(no evaluation)'}"
                   + (f"  ({', '.join(numbers)})" if numbers else ""))
    return out
