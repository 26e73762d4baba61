// The flow model: a bottleneck port is shared equally over time and kept busy; the slowest port rules.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Network } from './network.js'
import { Rng } from './rng.js'

const BLOCK = 64 * 1024

test('four receivers pulling from one 1 Gb/s sender share it equally and keep it busy', { timeout: 5000 }, () => {
  const net = new Network({ kind: 'uniform', upMbps: 1000, downMbps: 1000, latencyMs: 0.1 }, new Rng(1))
  for (let i = 0; i < 5; i++) net.addHost()
  // each receiver has one block request outstanding at a time (blocking reads): round-robin at the sender
  const lastDone = [0, 0, 0, 0]
  let t = 0
  for (let round = 0; round < 64; round++) {
    for (let r = 0; r < 4; r++) lastDone[r] = net.transfer(0, r + 1, BLOCK, t)
    t = Math.min(...lastDone) - 0.1
  }
  const ideal = 4 * 64 * BLOCK / 125_000 + 0.1
  for (const d of lastDone) assert.ok(Math.abs(d - ideal) / ideal < 0.02, `finish ${d} vs fair ${ideal}`)
})

test('the slowest port on the path sets the rate; crossing racks uses the uplinks', { timeout: 5000 }, () => {
  const net = new Network({ kind: 'racks', hostsPerRack: 2, hostMbps: 1000, rackUplinkMbps: 100, intraRackLatencyMs: 0.05, interRackLatencyMs: 0.25 }, new Rng(1))
  for (let i = 0; i < 4; i++) net.addHost()
  const inRack = net.transfer(0, 1, BLOCK, 0)
  assert.ok(Math.abs(inRack - (BLOCK / 125_000 + 0.05)) < 1e-9)
  const across = net.transfer(0, 2, BLOCK, 10)
  assert.ok(Math.abs(across - (10 + BLOCK / 12_500 + 0.25)) < 1e-9)
  assert.equal(net.crossRackBytes, BLOCK)
})
