// An agent's depth in the tree of one image: 0 for a seed, else 1 + the lowest depth among its parents,
// null while detached. Selection keeps every parent at that lowest depth (see select.ts), so along every
// child→parent edge depth strictly decreases and the parent graph has no cycle.

export function depthFromParents (parentDepths: ReadonlyArray<number | null>, isSeed = false): number | null {
  if (isSeed) return 0
  let min: number | null = null
  for (const d of parentDepths) {
    if (d === null || !Number.isFinite(d) || d < 0) continue
    if (min === null || d < min) min = d
  }
  return min === null ? null : min + 1
}
