// A picture of the swarm during a boot, from samples of the agents' node.status: (1) the tree as it was:
// who fetched from whom (bytesReceivedByPeer), edge width and label the bytes moved, each agent on the row of
// the depth it held while it was still fetching; (2) each agent's depth over time; (3) the origin's egress
// against what one central server would have sent (every byte every agent fetched). Self-contained SVG.

import { formatBytes } from './format.js'

export interface SwarmAgentSample {
  id: string
  label: string
  depth: number | null
  parents: string[]
  heldFraction: number
  /** Cumulative bytes received from each peer. */
  bytesReceivedByPeer: Record<string, number>
  /** Peers this agent serves: their parent relation is known here even when they are not sampled. */
  children?: string[]
}

export interface SwarmSample {
  atMs: number
  agents: SwarmAgentSample[]
  /** Cumulative bytes the origin sent. */
  originBytesSent: number
  /** The origin's children, when the origin itself was sampled. */
  originChildren?: string[]
}

/** An arrow of the picture: bytes `from` sent `to`, or 0 for a parent relation that moved nothing yet. */
export interface SwarmEdge {
  from: string
  to: string
  bytes: number
}

export interface SwarmRecording {
  title: string
  originId: string
  samples: SwarmSample[]
}

/** Keeps at most `maxSamples` samples, halving the resolution when full, so a long run stays bounded. */
export class SwarmRecorder {
  private readonly kept: SwarmSample[] = []
  private stride = 1
  private seen = 0
  constructor (private readonly maxSamples = 512) {}

  add (sample: SwarmSample): void {
    if (this.seen++ % this.stride !== 0) return
    this.kept.push(sample)
    if (this.kept.length > this.maxSamples) {
      for (let i = 1; i < this.kept.length; i++) this.kept.splice(i, 1)
      this.stride *= 2
    }
  }

  samples (): SwarmSample[] {
    return [...this.kept]
  }
}

function esc (text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
}

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf']

/** The depth an agent had while it fetched: the deepest seen before it held the whole image. */
function bootDepth (id: string, samples: SwarmSample[]): number | null {
  let deepest: number | null = null
  let last: number | null = null
  for (const s of samples) {
    const a = s.agents.find(x => x.id === id)
    if (a === undefined) continue
    last = a.depth
    if (a.depth !== null && a.heldFraction < 1) deepest = Math.max(deepest ?? 0, a.depth)
  }
  return deepest ?? last
}

/**
 * Every edge the samples know: who sent bytes to whom (cumulative, so past parents stay), and every parent
 * relation of the last sample, told by the child (its parents) or by the parent (its children).
 */
export function swarmEdges (rec: SwarmRecording): SwarmEdge[] {
  const final = rec.samples.at(-1)
  const edges = new Map<string, SwarmEdge>()
  const add = (from: string, to: string, bytes: number): void => {
    const key = `${from} ${to}`
    if (!edges.has(key) || bytes > 0) edges.set(key, { from, to, bytes })
  }
  for (const a of final?.agents ?? []) {
    for (const parent of a.parents) add(parent, a.id, 0)
    for (const child of a.children ?? []) add(a.id, child, 0)
  }
  for (const child of final?.originChildren ?? []) add(rec.originId, child, 0)
  for (const a of final?.agents ?? []) {
    for (const [peer, bytes] of Object.entries(a.bytesReceivedByPeer)) if (bytes > 0) add(peer, a.id, bytes)
  }
  return [...edges.values()]
}

export function renderSwarmSvg (rec: SwarmRecording): string {
  const samples = rec.samples
  const final = samples.at(-1)
  const agents = final?.agents ?? []
  const labels = new Map<string, string>([[rec.originId, 'origin'], ...agents.map(a => [a.id, a.label] as [string, string])])
  // Nodes: the origin, the sampled agents, and any other peer someone fetched from.
  const depthOf = new Map<string, number | null>([[rec.originId, 0]])
  for (const a of agents) depthOf.set(a.id, a.id === rec.originId ? 0 : bootDepth(a.id, samples))
  const edges = swarmEdges(rec)
  for (const e of edges) {
    for (const id of [e.from, e.to]) if (!depthOf.has(id)) depthOf.set(id, null)
  }
  const maxEdge = Math.max(1, ...edges.map(e => e.bytes))
  const rows = new Map<number, string[]>()
  for (const [id, d] of depthOf) {
    const row = d ?? -1
    if (!rows.has(row)) rows.set(row, [])
    rows.get(row)!.push(id)
  }
  const rowKeys = [...rows.keys()].sort((a, b) => (a < 0 ? 1e9 : a) - (b < 0 ? 1e9 : b))
  const boxW = 92
  const boxH = 30
  const gapX = 26
  const gapY = 90
  const labelW = 70
  const widest = Math.max(1, ...[...rows.values()].map(r => r.length))
  const width = Math.max(900, labelW + widest * (boxW + gapX) + gapX)
  const treeTop = 60
  const treeH = rowKeys.length * (boxH + gapY)
  const chartTop = treeTop + treeH + 20
  const chartH = 220
  const height = chartTop + chartH + 70
  const pos = new Map<string, { x: number, y: number }>()
  rowKeys.forEach((k, r) => {
    const members = rows.get(k)!.sort((a, b) => (labels.get(a) ?? a).localeCompare(labels.get(b) ?? b, 'en', { numeric: true }))
    const rowWidth = members.length * (boxW + gapX) - gapX
    members.forEach((id, i) => pos.set(id, { x: labelW + (width - labelW - rowWidth) / 2 + i * (boxW + gapX), y: treeTop + r * (boxH + gapY) }))
  })
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif">`,
    '<rect width="100%" height="100%" fill="white"/>',
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(rec.title)}</text>`,
    `<text x="${width / 2}" y="40" text-anchor="middle" font-size="11" fill="#555">who fetched from whom during the boot: arrow from the sender, width and label the bytes; rows: depth while fetching</text>`,
    // Fixed-size arrowheads: scaled by the stroke, a heavy edge would get a huge one.
    '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="10" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#446"/></marker></defs>'
  ]
  for (const e of edges) {
    const a = pos.get(e.from)
    const b = pos.get(e.to)
    if (a === undefined || b === undefined) continue
    const x1 = a.x + boxW / 2
    const x2 = b.x + boxW / 2
    // Downward edges leave the bottom of the sender; others (same row, or upward) curve beside the boxes.
    const down = b.y > a.y
    const y1 = down ? a.y + boxH : a.y + boxH / 2
    const y2 = down ? b.y : b.y + boxH / 2
    const bend = down ? 0 : 40 + Math.abs(x2 - x1) / 6
    // An edge that skips a row curves sideways, clear of the boxes between.
    const skips = down ? Math.round((b.y - a.y) / (boxH + gapY)) - 1 : 0
    const cx = (x1 + x2) / 2 + (skips > 0 ? (boxW * 0.9 + 30 * skips) * (x2 >= x1 ? 1 : -1) : 0)
    const cy = (y1 + y2) / 2 + (down ? 0 : bend)
    const w = 1 + 7 * Math.sqrt(e.bytes / maxEdge)
    // A parent that sent nothing yet is dashed: the relation is known, no bytes moved on it.
    const dash = e.bytes > 0 ? '' : ' stroke-dasharray="5 4"'
    out.push(`<path d="M ${x1} ${y1} Q ${cx} ${cy} ${x2} ${y2}" fill="none" stroke="#446" stroke-opacity="0.55" stroke-width="${w.toFixed(1)}"${dash} marker-end="url(#arrow)"/>`)
    // The label sits on the curve's midpoint (a quadratic's midpoint is halfway to its control point).
    const mx = (x1 + x2) / 4 + cx / 2
    const my = (y1 + y2) / 4 + cy / 2
    out.push(`<text x="${mx + 5}" y="${my}" font-size="9" fill="#224">${esc(e.bytes > 0 ? formatBytes(e.bytes) : 'parent')}</text>`)
  }
  for (const [id, p] of pos) {
    const d = depthOf.get(id)
    const fill = id === rec.originId ? '#fde9b8' : d === null ? '#eee' : '#d8e8fb'
    out.push(`<rect x="${p.x}" y="${p.y}" width="${boxW}" height="${boxH}" rx="6" fill="${fill}" stroke="#335"/>`)
    out.push(`<text x="${p.x + boxW / 2}" y="${p.y + 19}" text-anchor="middle" font-size="12">${esc(labels.get(id) ?? id.slice(-8))}</text>`)
  }
  rowKeys.forEach((k, r) => {
    out.push(`<text x="8" y="${treeTop + r * (boxH + gapY) + boxH / 2 + 4}" font-size="11" fill="#888">${k < 0 ? 'no depth' : `depth ${k}`}</text>`)
  })
  // Charts share the time axis.
  const t0 = samples[0]?.atMs ?? 0
  const spanS = Math.max(1, ((final?.atMs ?? t0) - t0) / 1000)
  const chartW = (width - 2 * 60 - 100) / 2
  const axis = (x0: number, title: string, yMax: number, yLabel: (v: number) => string, yTicks = 4): void => {
    out.push(`<text x="${x0 + chartW / 2}" y="${chartTop - 4}" text-anchor="middle" font-size="12" font-weight="bold">${esc(title)}</text>`)
    out.push(`<line x1="${x0}" y1="${chartTop + chartH}" x2="${x0 + chartW}" y2="${chartTop + chartH}" stroke="#333"/>`)
    out.push(`<line x1="${x0}" y1="${chartTop}" x2="${x0}" y2="${chartTop + chartH}" stroke="#333"/>`)
    for (let i = 0; i <= yTicks; i++) {
      const y = chartTop + chartH - i * chartH / yTicks
      out.push(`<text x="${x0 - 4}" y="${y + 3}" text-anchor="end" font-size="9" fill="#555">${esc(yLabel(yMax * i / yTicks))}</text>`)
    }
    for (let i = 0; i <= 4; i++) {
      out.push(`<text x="${x0 + i * chartW / 4}" y="${chartTop + chartH + 13}" text-anchor="middle" font-size="9" fill="#555">${(spanS * i / 4).toFixed(0)} s</text>`)
    }
  }
  const sx = (x0: number, atMs: number): number => x0 + (atMs - t0) / 1000 / spanS * chartW
  // (2) depth over time.
  const leftX = 60
  const maxDepth = Math.max(1, ...samples.flatMap(s => s.agents.map(a => a.depth ?? 0)))
  axis(leftX, 'depth of each agent over time', maxDepth, v => String(Math.round(v)), Math.min(maxDepth, 8))
  agents.forEach((agent, i) => {
    const points: string[] = []
    for (const s of samples) {
      const a = s.agents.find(x => x.id === agent.id)
      if (a?.depth === null || a === undefined) continue
      // Small vertical offsets keep agents at the same depth apart.
      points.push(`${sx(leftX, s.atMs).toFixed(1)},${(chartTop + chartH - a.depth / maxDepth * chartH - (i % 5) * 1.5).toFixed(1)}`)
    }
    if (points.length > 0) out.push(`<polyline points="${points.join(' ')}" fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="1.4"/>`)
    out.push(`<text x="${leftX + 6 + (i % 5) * (chartW / 5)}" y="${chartTop + chartH + 30 + Math.floor(i / 5) * 12}" font-size="9" fill="${COLORS[i % COLORS.length]}">${esc(agent.label)}</text>`)
  })
  // (3) origin egress against a central server.
  const rightX = leftX + chartW + 100
  const central = samples.map(s => s.agents.reduce((sum, a) => sum + Object.values(a.bytesReceivedByPeer).reduce((x, y) => x + y, 0), 0))
  const maxBytes = Math.max(1, ...central, ...samples.map(s => s.originBytesSent))
  axis(rightX, 'bytes sent: the origin vs one central server', maxBytes, v => formatBytes(v))
  const line = (values: number[], color: string, dash: string): void => {
    const pts = samples.map((s, i) => `${sx(rightX, s.atMs).toFixed(1)},${(chartTop + chartH - values[i] / maxBytes * chartH).toFixed(1)}`)
    if (pts.length > 0) out.push(`<polyline points="${pts.join(' ')}" fill="none" stroke="${color}" stroke-width="2" stroke-dasharray="${dash}"/>`)
  }
  line(central, '#d62728', '6 3')
  line(samples.map(s => s.originBytesSent), '#1f77b4', '')
  out.push(`<text x="${rightX + 6}" y="${chartTop + chartH + 30}" font-size="10" fill="#1f77b4">origin (vmthunderd): ${esc(formatBytes(final?.originBytesSent ?? 0))}</text>`)
  out.push(`<text x="${rightX + 6}" y="${chartTop + chartH + 44}" font-size="10" fill="#d62728">central server (every byte every agent fetched): ${esc(formatBytes(central.at(-1) ?? 0))}</text>`)
  out.push('</svg>')
  return out.join('\n') + '\n'
}

/** One sample from node.status results: `origin` is the origin's status, `agents` the others'. */
export function swarmSample (atMs: number, imageId: string, originStatus: { images: Record<string, { bytesSent?: number, children?: string[] }> } | undefined,
  agents: Array<{ label: string, status: { peerId: string, images: Record<string, { depth?: number | null, parents?: string[], children?: string[], heldFraction: number, bytesReceivedByPeer?: Record<string, number> }> } }>): SwarmSample {
  // Older daemons reported a count of children here, not their ids.
  const originChildren = originStatus?.images[imageId]?.children
  return {
    atMs,
    originBytesSent: originStatus?.images[imageId]?.bytesSent ?? 0,
    ...(Array.isArray(originChildren) ? { originChildren } : {}),
    agents: agents.map(({ label, status }) => {
      const i = status.images[imageId]
      return {
        id: status.peerId,
        label,
        depth: i?.depth ?? null,
        parents: i?.parents ?? [],
        heldFraction: i?.heldFraction ?? 0,
        bytesReceivedByPeer: i?.bytesReceivedByPeer ?? {},
        children: Array.isArray(i?.children) ? i.children : []
      }
    })
  }
}
