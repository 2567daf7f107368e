"""Plain nn.Modules. Nothing here knows about Lightning, ranks or configs."""
