# An Elixir project that uses emmap as a mix dependency built by rebar3.
# The test copies this folder elsewhere and points EMMAP_PATH at the checkout.
defmodule EmmapConsumer.MixProject do
  use Mix.Project

  def project do
    [
      app: :emmap_consumer,
      version: "0.1.0",
      elixir: ">= 1.14.0",
      deps: [{:emmap, path: System.fetch_env!("EMMAP_PATH"), manager: :rebar3}]
    ]
  end

  def application, do: [extra_applications: []]
end
