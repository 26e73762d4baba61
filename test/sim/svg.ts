// Hand-made SVG charts (no dependency): line charts with optional log-scale x, grouped bar charts.

export interface Series { name: string, color: string, points: Array<[number, number]>, step?: boolean }

export const COLORS: Record<string, string> = {
  central: '#d62728', volt: '#1f77b4', vmthunderd: '#2ca02c',
  'central+prefetch': '#ff9896', 'volt+prefetch': '#aec7e8', 'vmthunderd+prefetch': '#98df8a'
}

const W = 760; const H = 440; const ML = 70; const MR = 20; const MT = 40; const MB = 60

function esc (s: string): string { return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;') }

function fmt (v: number): string {
  const a = Math.abs(v)
  if (a >= 1e9) return `${+(v / 1e9).toPrecision(3)}G`
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`
  return `${+v.toPrecision(3)}`
}

function ticks (lo: number, hi: number, log: boolean): number[] {
  if (log) {
    const out: number[] = []
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) for (const m of [1, 2, 5]) { const v = m * 10 ** e; if (v >= lo && v <= hi) out.push(v) }
    return out
  }
  const span = hi - lo || 1
  const step = 10 ** Math.floor(Math.log10(span / 5))
  const nice = [1, 2, 5, 10].map(m => m * step).find(s => span / s <= 8) ?? step * 10
  const out: number[] = []
  for (let v = Math.ceil(lo / nice) * nice; v <= hi + 1e-9; v += nice) out.push(+v.toPrecision(12))
  return out
}

export interface LineChartOptions {
  title: string
  xLabel: string
  yLabel: string
  series: Series[]
  logX?: boolean
  yMin?: number
  yMax?: number
  vlines?: Array<{ x: number, label: string }>
}

export function lineChart (o: LineChartOptions): string {
  const pts = o.series.flatMap(s => s.points).filter(p => Number.isFinite(p[0]) && Number.isFinite(p[1]) && (!o.logX || p[0] > 0))
  const xs = [...pts.map(p => p[0]), ...(o.vlines ?? []).map(v => v.x).filter(x => !o.logX || x > 0)]
  let xLo = xs.length > 0 ? Math.min(...xs) : 0; let xHi = xs.length > 0 ? Math.max(...xs) : 1
  if (o.logX) { xLo = Math.max(xLo, 1e-9) / 1.2; xHi *= 1.2 }
  if (xHi <= xLo) xHi = xLo + 1
  const yLo = o.yMin ?? Math.min(0, ...pts.map(p => p[1]))
  let yHi = o.yMax ?? Math.max(1, ...pts.map(p => p[1]))
  if (yHi <= yLo) yHi = yLo + 1
  const pw = W - ML - MR; const ph = H - MT - MB
  const X = (x: number): number => ML + (o.logX ? (Math.log(x) - Math.log(xLo)) / (Math.log(xHi) - Math.log(xLo)) : (x - xLo) / (xHi - xLo)) * pw
  const Y = (y: number): number => MT + ph - (y - yLo) / (yHi - yLo) * ph
  const parts: string[] = []
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`)
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`)
  parts.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(o.title)}</text>`)
  for (const t of ticks(xLo, xHi, o.logX === true)) {
    parts.push(`<line x1="${X(t)}" x2="${X(t)}" y1="${MT}" y2="${MT + ph}" stroke="#eee"/>`)
    parts.push(`<text x="${X(t)}" y="${MT + ph + 16}" text-anchor="middle">${fmt(t)}</text>`)
  }
  for (const t of ticks(yLo, yHi, false)) {
    parts.push(`<line x1="${ML}" x2="${ML + pw}" y1="${Y(t)}" y2="${Y(t)}" stroke="#eee"/>`)
    parts.push(`<text x="${ML - 6}" y="${Y(t) + 4}" text-anchor="end">${fmt(t)}</text>`)
  }
  parts.push(`<rect x="${ML}" y="${MT}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`)
  parts.push(`<text x="${ML + pw / 2}" y="${H - 18}" text-anchor="middle">${esc(o.xLabel)}${o.logX === true ? ' (log scale)' : ''}</text>`)
  parts.push(`<text x="16" y="${MT + ph / 2}" text-anchor="middle" transform="rotate(-90 16 ${MT + ph / 2})">${esc(o.yLabel)}</text>`)
  for (const v of o.vlines ?? []) {
    if (o.logX === true && v.x <= 0) continue
    parts.push(`<line x1="${X(v.x)}" x2="${X(v.x)}" y1="${MT}" y2="${MT + ph}" stroke="#777" stroke-dasharray="4 3"/>`)
    parts.push(`<text x="${X(v.x) + 3}" y="${MT + ph - 6}" fill="#555">${esc(v.label)}</text>`)
  }
  o.series.forEach((s, i) => {
    const p = s.points.filter(q => Number.isFinite(q[0]) && Number.isFinite(q[1]) && (!o.logX || q[0] > 0))
    if (p.length > 0) {
      let d = `M${X(p[0][0]).toFixed(1)},${Y(p[0][1]).toFixed(1)}`
      for (let j = 1; j < p.length; j++) {
        if (s.step === true) d += `H${X(p[j][0]).toFixed(1)}`
        d += `L${X(p[j][0]).toFixed(1)},${Y(p[j][1]).toFixed(1)}`
      }
      parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"/>`)
    }
    parts.push(`<rect x="${ML + 10}" y="${MT + 10 + i * 18}" width="12" height="12" fill="${s.color}"/>`)
    parts.push(`<text x="${ML + 28}" y="${MT + 20 + i * 18}">${esc(s.name)}</text>`)
  })
  parts.push('</svg>')
  return parts.join('\n')
}

export interface BarChartOptions {
  title: string
  xLabel: string
  yLabel: string
  categories: string[]
  groups: Array<{ name: string, color: string, values: number[] }>
}

export function barChart (o: BarChartOptions): string {
  const pw = W - ML - MR; const ph = H - MT - MB
  const yHi = Math.max(1, ...o.groups.flatMap(g => g.values))
  const Y = (y: number): number => MT + ph - y / yHi * ph
  const cw = pw / Math.max(1, o.categories.length)
  const bw = cw * 0.8 / Math.max(1, o.groups.length)
  const parts: string[] = []
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`)
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`)
  parts.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(o.title)}</text>`)
  for (const t of ticks(0, yHi, false)) {
    parts.push(`<line x1="${ML}" x2="${ML + pw}" y1="${Y(t)}" y2="${Y(t)}" stroke="#eee"/>`)
    parts.push(`<text x="${ML - 6}" y="${Y(t) + 4}" text-anchor="end">${fmt(t)}</text>`)
  }
  o.categories.forEach((c, i) => {
    parts.push(`<text x="${ML + cw * i + cw / 2}" y="${MT + ph + 16}" text-anchor="middle">${esc(c)}</text>`)
    o.groups.forEach((g, j) => {
      const v = g.values[i] ?? 0
      if (v > 0) parts.push(`<rect x="${(ML + cw * i + cw * 0.1 + j * bw).toFixed(1)}" y="${Y(v).toFixed(1)}" width="${bw.toFixed(1)}" height="${(MT + ph - Y(v)).toFixed(1)}" fill="${g.color}"><title>${esc(g.name)}: ${v}</title></rect>`)
    })
  })
  parts.push(`<rect x="${ML}" y="${MT}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`)
  parts.push(`<text x="${ML + pw / 2}" y="${H - 18}" text-anchor="middle">${esc(o.xLabel)}</text>`)
  parts.push(`<text x="16" y="${MT + ph / 2}" text-anchor="middle" transform="rotate(-90 16 ${MT + ph / 2})">${esc(o.yLabel)}</text>`)
  o.groups.forEach((g, i) => {
    parts.push(`<rect x="${W - MR - 140}" y="${MT + 10 + i * 18}" width="12" height="12" fill="${g.color}"/>`)
    parts.push(`<text x="${W - MR - 122}" y="${MT + 20 + i * 18}">${esc(g.name)}</text>`)
  })
  parts.push('</svg>')
  return parts.join('\n')
}
