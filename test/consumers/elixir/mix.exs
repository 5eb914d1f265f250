# An Elixir project that uses emmap as a mix dependency built by rebar3.
# EMMAP_PATH names the emmap checkout (by default the one this fixture lives in).
defmodule EmmapConsumer.MixProject do
  use Mix.Project

  def project do
    [
      app: :emmap_consumer,
      version: "0.1.0",
      elixir: ">= 1.14.0",
      deps: [{:emmap, path: System.get_env("EMMAP_PATH", "../../.."), manager: :rebar3}]
    ]
  end

  def application, do: [extra_applications: []]
end
