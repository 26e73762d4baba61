// Tests start real daemons through the same code the demo and benchmarks use.
export * from '../../scripts/lib/agent-process.js'
