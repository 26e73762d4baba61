// Checks on a parent graph (child → parents), for tests, the simulator and status output.

/** A cycle as a list of peer ids (first repeated at the end), or null when the graph is acyclic. */
export function findCycle (parentsOf: ReadonlyMap<string, readonly string[]>): string[] | null {
  const state = new Map<string, 1 | 2>() // 1 on the stack, 2 done
  for (const start of parentsOf.keys()) {
    if (state.has(start)) continue
    // iterative DFS: stack of [node, next parent index]
    const stack: Array<[string, number]> = [[start, 0]]
    state.set(start, 1)
    while (stack.length > 0) {
      const top = stack[stack.length - 1]
      const ps = parentsOf.get(top[0]) ?? []
      if (top[1] >= ps.length) { state.set(top[0], 2); stack.pop(); continue }
      const next = ps[top[1]++]
      const s = state.get(next)
      if (s === 1) {
        const from = stack.findIndex(e => e[0] === next)
        return [...stack.slice(from).map(e => e[0]), next]
      }
      if (s === undefined) { state.set(next, 1); stack.push([next, 0]) }
    }
  }
  return null
}

/** Children per parent, from child → parents. */
export function fanout (parentsOf: ReadonlyMap<string, readonly string[]>): Map<string, number> {
  const out = new Map<string, number>()
  for (const ps of parentsOf.values()) for (const p of ps) out.set(p, (out.get(p) ?? 0) + 1)
  return out
}
