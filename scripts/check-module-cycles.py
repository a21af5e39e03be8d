#!/usr/bin/env python3
"""Fails if the modules of a crate import each other in a cycle.

Every `.rs` file under SRC (default: metrics-core/src) is a module; an edge goes from a
module to each module whose items it names (`use crate::a::b::..`, `crate::a::b::X` in
code, `super::..`, `self::..`), to the deepest module of the path. Comments, doc text and
`#[cfg(test)] mod tests` blocks are left out; `mod x;` declarations and a module's use of
its own items are not edges. The check runs twice: on every module, and on the top-level
modules alone (each with its submodules folded in). The crate root may only re-export:
code that names an item through it fails the check. Prints the layers, bottom first.
"""
import re
import sys
from pathlib import Path


def module_of(path: Path, src: Path) -> tuple:
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def code_of(text: str) -> str:
    # Drop unit-test modules (always last in a file here) and comments.
    m = re.search(r"^#\[cfg\(test\)\]\s*\nmod tests\b", text, re.M)
    if m:
        text = text[: m.start()]
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    return text


def paths_in(code: str, children):
    """Yields (anchor, [segments]) for every path that starts at crate/super/self, or at
    a child module of this one (`use child::X`, `child::f()`)."""
    # Expand `use` trees into single paths.
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        yield from expand(m.group(1).replace("\n", " "), children=children)
    rest = re.sub(r"\buse\s+[^;]+;", "", code)
    for m in re.finditer(r"(?<!::)\b(crate|super|self)((?:::\w+)+)", rest):
        yield m.group(1), m.group(2).strip(":").split("::")
    for c in children:
        for m in re.finditer(r"(?<![:\w])" + c + r"((?:::\w+)+)", rest):
            yield "self", [c] + m.group(1).strip(":").split("::")


def expand(tree: str, prefix="", children=()):
    tree = tree.strip()
    if tree.startswith("pub"):
        tree = re.sub(r"^pub(\([^)]*\))?\s+", "", tree)
    m = re.match(r"^([\w:]*?)::\{(.*)\}$", tree, re.S)
    if m:
        head = (prefix + "::" + m.group(1)).strip(":")
        depth, cur, items = 0, "", []
        for ch in m.group(2):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                items.append(cur)
                cur = ""
            else:
                cur += ch
        items.append(cur)
        for it in items:
            if it.strip():
                yield from expand(it.strip(), head, children)
        return
    full = (prefix + "::" + re.sub(r"\s+as\s+\w+$", "", tree)).strip(":")
    segs = full.split("::")
    if segs[0] in ("crate", "super", "self"):
        yield segs[0], segs[1:]
    elif segs[0] in children:
        yield "self", segs


def resolve(anchor, segs, here, modules):
    if anchor == "crate":
        base = ()
    elif anchor == "self":
        base = here
    else:
        base = here[:-1]
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    target = base
    for s in segs:
        if s == "self":
            continue
        if target + (s,) in modules:
            target = target + (s,)
        else:
            break
    return target


def find_cycle(nodes, edges):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(nodes):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def layers(nodes, edges):
    level = {}

    def depth(n):
        if n not in level:
            level[n] = 0
            level[n] = 1 + max((depth(m) for m in edges.get(n, ())), default=-1)
        return level[n]

    for n in nodes:
        depth(n)
    out = {}
    for n, d in level.items():
        out.setdefault(d, []).append(n)
    return [sorted(out[d]) for d in sorted(out)]


def name(m):
    return "::".join(m) or "crate"


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "metrics-core/src")
    files = sorted(src.rglob("*.rs"))
    modules = {module_of(f, src): f for f in files}
    edges = {}
    failed = False
    for m, f in modules.items():
        children = [c[-1] for c in modules if len(c) == len(m) + 1 and c[: len(m)] == m]
        for anchor, segs in paths_in(code_of(f.read_text()), children):
            t = resolve(anchor, segs, m, modules)
            if t == () and m != ():
                # The crate root only re-exports: code names the module that defines it.
                print(f"{name(m)} names {anchor}::{'::'.join(segs)} through the crate root")
                failed = True
            elif t != m:
                edges.setdefault(m, set()).add(t)
    cycle = find_cycle(modules, edges)
    if cycle:
        print("import cycle between modules: " + " -> ".join(name(c) for c in cycle))
        failed = True
    top_nodes = {m[:1] for m in modules if m}
    top = {}
    for a, bs in edges.items():
        for b in bs:
            if a[:1] and b[:1] and a[:1] != b[:1]:
                top.setdefault(a[:1], set()).add(b[:1])
    cycle = find_cycle(top_nodes, top)
    if cycle:
        print("import cycle between top-level modules: " + " -> ".join(name(c) for c in cycle))
        failed = True
    if failed:
        sys.exit(1)
    print(f"{len(modules)} modules, {sum(len(v) for v in edges.values())} imports, no cycle")
    for i, layer in enumerate(layers(top_nodes, top)):
        print(f"  layer {i}: " + ", ".join(name(m) for m in layer))


if __name__ == "__main__":
    main()
