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
