// The distribution tree in DOT, for Graphviz users (an edge from every agent to each of its parents). The SVG
// picture of the swarm during a boot is src/cli/swarm-svg.ts.

export interface TreeNode {
  id: string
  label: string
  depth: number | null
  parents: string[]
}

function esc (text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
}

export function renderTreeDot (nodes: readonly TreeNode[]): string {
  const lines = ['digraph vmthunder {', '  rankdir=TB;', '  node [shape=box, style=rounded, fontname="Helvetica"];']
  for (const n of nodes) lines.push(`  "${n.id}" [label="${esc(n.label)}\\ndepth ${n.depth ?? '-'}"];`)
  for (const n of nodes) for (const p of n.parents) lines.push(`  "${p}" -> "${n.id}";`)
  lines.push('}')
  return lines.join('\n') + '\n'
}
