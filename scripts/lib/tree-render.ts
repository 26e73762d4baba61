// The distribution tree as a picture: DOT for Graphviz users, and a self-contained SVG laid out by depth
// (origin on top, each row one depth, an edge from every agent to each of its parents).

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

export function renderTreeSvg (nodes: readonly TreeNode[], title: string): string {
  const rows = new Map<number, TreeNode[]>()
  for (const n of nodes) {
    const d = n.depth ?? -1
    if (!rows.has(d)) rows.set(d, [])
    rows.get(d)!.push(n)
  }
  const depths = [...rows.keys()].sort((a, b) => (a < 0 ? 1e9 : a) - (b < 0 ? 1e9 : b))
  const boxW = 96
  const boxH = 34
  const gapX = 24
  const gapY = 80
  const widest = Math.max(...[...rows.values()].map(r => r.length))
  const labelW = 70 // the depth labels on the left
  const width = Math.max(480, labelW + widest * (boxW + gapX) + gapX)
  const height = 60 + depths.length * (boxH + gapY)
  const pos = new Map<string, { x: number, y: number }>()
  depths.forEach((d, row) => {
    const members = rows.get(d)!
    const rowWidth = members.length * (boxW + gapX) - gapX
    members.forEach((n, i) => pos.set(n.id, { x: labelW + (width - labelW - rowWidth) / 2 + i * (boxW + gapX), y: 50 + row * (boxH + gapY) }))
  })
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`,
    `<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#557"/></marker></defs>`
  ]
  for (const n of nodes) {
    const to = pos.get(n.id)!
    for (const p of n.parents) {
      const from = pos.get(p)
      if (from === undefined) continue
      parts.push(`<line x1="${from.x + boxW / 2}" y1="${from.y + boxH}" x2="${to.x + boxW / 2}" y2="${to.y}" stroke="#557" stroke-width="1.3" marker-end="url(#arrow)" opacity="0.8"/>`)
    }
  }
  for (const n of nodes) {
    const p = pos.get(n.id)!
    const fill = n.depth === 0 ? '#fde9b8' : n.depth === null ? '#eee' : '#d8e8fb'
    parts.push(`<rect x="${p.x}" y="${p.y}" width="${boxW}" height="${boxH}" rx="6" fill="${fill}" stroke="#335"/>`)
    parts.push(`<text x="${p.x + boxW / 2}" y="${p.y + 15}" text-anchor="middle" font-size="12">${esc(n.label)}</text>`)
    parts.push(`<text x="${p.x + boxW / 2}" y="${p.y + 28}" text-anchor="middle" font-size="10" fill="#555">depth ${n.depth ?? '-'}</text>`)
  }
  depths.forEach((d, row) => {
    parts.push(`<text x="8" y="${50 + row * (boxH + gapY) + boxH / 2 + 4}" font-size="11" fill="#888">${d < 0 ? 'detached' : `depth ${d}`}</text>`)
  })
  parts.push('</svg>')
  return parts.join('\n') + '\n'
}
