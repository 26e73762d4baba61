// Prometheus metrics of a real daemon: scraped over HTTP after real NBD reads, checked by `promtool check
// metrics` (the exposition format and naming conventions), and their values against node.status.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { writeFile } from 'node:fs/promises'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeImage } from '../helpers/images.js'

const MiB = 1024 * 1024
let dir: string
let daemon: TestDaemon
let url: string

/** The value of one sample line, e.g. sample(text, 'vmthunder_image_read_bytes_total{image="base"}'). */
function sample (text: string, series: string): number | undefined {
  const line = text.split('\n').find(l => l.startsWith(series + ' '))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

before(async () => {
  dir = await makeTempDir('vmt-metrics')
  const config = join(dir, 'config.json')
  await writeFile(config, JSON.stringify({ metrics: { listen: '127.0.0.1:0' } }))
  daemon = await startDaemon({ dir, args: ['--config', config, '--no-p2p'], allowImageDirs: [dir] })
  const started = daemon.log().split('\n').find(l => l.includes('"message":"vmthunderd started"'))!
  url = JSON.parse(started).metrics
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/)
  const image = join(dir, 'base.raw')
  await makeImage(image, 16 * MiB, [[0, 4 * MiB]])
  await daemon.call('image.register', { id: 'base', path: image })
  await daemon.call('instance.create', { name: 'vm1', image: 'base' })
  await execa('nbdcopy', [daemon.nbdUri('base'), join(dir, 'copy.raw')])
})

after(async () => {
  await daemon?.stop()
  await removeDir(dir)
})

test('a scrape passes promtool check metrics', { timeout: 60_000 }, async () => {
  const res = await fetch(url)
  assert.equal(res.status, 200)
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/)
  const text = await res.text()
  const check = await execa('promtool', ['check', 'metrics'], { input: text, reject: false })
  assert.equal(check.exitCode, 0, `${check.stdout}\n${check.stderr}`)
  assert.equal(check.stderr.trim(), '')
})

test('values match the daemon\'s status after real NBD reads', { timeout: 60_000 }, async () => {
  const text = await (await fetch(url)).text()
  const status = await daemon.call('node.status')
  const image = status.images.base
  // nbdcopy read the whole image at least once.
  const readBytes = sample(text, 'vmthunder_image_read_bytes_total{image="base"}')!
  assert.ok(readBytes >= 16 * MiB, String(readBytes))
  assert.ok(readBytes <= image.cache.readBytes)
  assert.equal(sample(text, 'vmthunder_image_size_bytes{image="base"}'), 16 * MiB)
  assert.equal(sample(text, 'vmthunder_image_held_ratio{image="base"}'), 1)
  assert.equal(sample(text, 'vmthunder_image_instances{image="base"}'), 1)
  assert.equal(sample(text, 'vmthunder_instances'), 1)
  assert.equal(sample(text, 'vmthunder_build_info{version="0.1.0"}'), 1)
  // Every read went through the latency histogram.
  const reads = sample(text, 'vmthunder_image_read_duration_seconds_count{image="base"}')!
  assert.ok(reads > 0 && reads <= image.cache.readRequests, `${reads} vs ${image.cache.readRequests}`)
  assert.equal(sample(text, 'vmthunder_image_read_duration_seconds_bucket{le="+Inf",image="base"}'), reads)
  assert.ok(sample(text, 'vmthunder_cache_bytes')! >= 0)
  assert.equal(sample(text, 'vmthunder_cache_quota_bytes'), undefined, 'no quota configured: no sample')
  assert.ok(sample(text, 'process_resident_memory_bytes')! > 0)
})

test('only GET /metrics is served', { timeout: 30_000 }, async () => {
  assert.equal((await fetch(url.replace('/metrics', '/'))).status, 404)
  assert.equal((await fetch(url, { method: 'POST', body: 'x' })).status, 405)
})

test('metrics are off unless metrics.listen is set', { timeout: 60_000 }, async () => {
  const other = await startDaemon()
  try {
    const started = other.log().split('\n').find(l => l.includes('"message":"vmthunderd started"'))!
    assert.equal(JSON.parse(started).metrics, null)
  } finally {
    await other.stop()
    await removeDir(other.dir)
  }
})
